#!/usr/bin/env python3
"""GIMP 3 plug-in: Filters > Enhance > LoRA-IR Restore... (procedure `plug-in-lorair-restore`).

GIMP runs this file as a program, so Python puts this folder on sys.path: the code is in the
`lorair_gimp` package next to it, and every GIMP call is in `lorair_gimp.host`.
"""

from lorair_gimp.host import main

main()
