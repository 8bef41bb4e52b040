"""Strict configs; top-k routing; manual overrides and their validation."""

import json
import math

import pytest
import torch

from lorair_desktop.core.config import config_from_dict, load_config
from lorair_desktop.core.errors import ConfigError, ExpertError
from lorair_desktop.core.routing import apply_overrides, parse_experts_arg, topk_softmax

EXPERTS = ("noise", "blur", "jpeg")


def _cfg_dict() -> dict:
    return json.loads(json.dumps(load_config("lorair-compact").to_dict()))


def test_preset_loads_with_its_experts() -> None:
    cfg = load_config("lorair-compact")
    assert cfg.experts == ("noise", "blur", "jpeg", "rain", "haze", "low-light")
    assert cfg.pad_multiple == 16


def test_unknown_key_is_an_error_naming_valid_keys() -> None:
    d = _cfg_dict()
    d["net"]["widht"] = 16
    with pytest.raises(ConfigError) as e:
        config_from_dict(d)
    assert "widht" in e.value.message and "width" in e.value.hint


def test_missing_required_key_and_bad_values() -> None:
    d = _cfg_dict()
    del d["experts"]
    with pytest.raises(ConfigError, match="missing key 'experts'"):
        config_from_dict(d)
    d = _cfg_dict()
    d["experts"] = ["noise", "Noise!"]
    with pytest.raises(ConfigError, match="not valid"):
        config_from_dict(d)
    d = _cfg_dict()
    d["net"]["width"] = "16"
    with pytest.raises(ConfigError, match="must be int"):
        config_from_dict(d)
    with pytest.raises(ConfigError, match="valid presets"):
        load_config("no-such-model")


def test_oriented_experts_default_to_the_known_ones_or_are_listed() -> None:
    assert load_config("lorair-compact").oriented == {"rain"}
    assert load_config("lorair-setting1").oriented == {"snow", "rain-fog"}
    d = _cfg_dict()
    assert "oriented_experts" not in d  # unstated stays unstated: older checkpoints' configs round-trip
    d["oriented_experts"] = ["haze"]
    cfg = config_from_dict(d)
    assert cfg.oriented == {"haze"} and config_from_dict(json.loads(cfg.to_json())) == cfg
    d["oriented_experts"] = []
    assert config_from_dict(d).oriented == frozenset()
    d["oriented_experts"] = ["snow"]
    with pytest.raises(ConfigError, match="not experts"):
        config_from_dict(d)
    for bad in ("rain", [1], {"rain": True}):
        d["oriented_experts"] = bad
        with pytest.raises(ConfigError, match="list of expert names"):
            config_from_dict(d)


def test_topk_softmax_keeps_k_and_sums_to_one() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.0, 3.0, 2.9, 1.0]])
    w1 = topk_softmax(logits, 1)
    assert torch.equal(w1, torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
    w2 = topk_softmax(logits, 2)
    assert torch.allclose(w2.sum(-1), torch.ones(2))
    assert (w2 > 0).sum().item() == 4
    assert math.isclose(w2[0, 0].item(), 1 / (1 + math.exp(-1.0)), rel_tol=1e-6)


def test_min_share_drops_a_sliver_of_the_runner_up_and_keeps_a_real_mix() -> None:
    # row 0: 0.953 / 0.047, a router sure of one degradation; row 1: 0.525 / 0.475, a real mix
    logits = torch.tensor([[3.0, 0.0, -1.0], [0.1, 0.0, -2.0]])
    w = topk_softmax(logits, 2, min_share=0.1)
    assert torch.equal(w[0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(w[1], topk_softmax(logits, 2)[1])
    assert torch.equal(topk_softmax(logits, 2, min_share=0.0), topk_softmax(logits, 2))


def test_min_share_must_leave_the_largest_share() -> None:
    d = json.loads(load_config("lorair-lite").to_json())
    for bad in (-0.1, 0.5, 0.9):
        d["lora"]["min_share"] = bad
        with pytest.raises(ConfigError, match="min_share"):
            config_from_dict(d)
    d["lora"]["min_share"] = 0.1
    assert config_from_dict(d).lora.min_share == 0.1


def test_overrides_are_applied_exactly() -> None:
    router = [0.7, 0.3, 0.0]
    assert apply_overrides(router, None, EXPERTS) == router
    assert apply_overrides(router, {"jpeg": 0.25}, EXPERTS) == [0.0, 0.0, 0.25]
    assert apply_overrides(router, {"jpeg": 0.25}, EXPERTS, keep_router=True) == [0.7, 0.3, 0.25]


@pytest.mark.parametrize("bad", [{"rain": 1.0}, {"noise": -0.1}, {"noise": float("nan")}, {"noise": "x"},
                                 {"noise": True}, {"noise": 5.0}])
def test_bad_overrides_are_refused(bad: dict) -> None:
    with pytest.raises(ExpertError):
        apply_overrides([1, 0, 0], bad, EXPERTS)


def test_unknown_expert_error_lists_the_valid_ones() -> None:
    with pytest.raises(ExpertError) as e:
        parse_experts_arg("rain=1", EXPERTS)
    assert "noise, blur, jpeg" in e.value.hint


def test_parse_experts_arg() -> None:
    assert parse_experts_arg("auto", EXPERTS) == (None, False)
    assert parse_experts_arg("noise=0.8, jpeg=0.3", EXPERTS) == ({"noise": 0.8, "jpeg": 0.3}, False)
    assert parse_experts_arg("auto,blur=0", EXPERTS) == ({"blur": 0.0}, True)
    for bad in ("noise", "noise=abc", "noise=-1"):
        with pytest.raises(ExpertError):
            parse_experts_arg(bad, EXPERTS)
