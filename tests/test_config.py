"""Profiles: both shipped profiles load; bad keys and values are named."""
from __future__ import annotations

import pytest

from prunepriv.config import load_profile
from prunepriv.errors import ConfigError


@pytest.mark.parametrize("name", ["smoke", "paper"])
def test_shipped_profiles_validate(name):
    profile = load_profile(name)
    assert profile.name == name and profile.model == "embedded"
    assert len(profile.digest()) == 64


def _write(tmp_path, text: str):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("name: x\nsimilarity:\n  n_sampels: 3\n", r"unknown profile key 'similarity.n_sampels' \(did you mean 'similarity.n_samples'\?\)"),
    ("name: x\nseeed: 1\n", "unknown profile key 'seeed'"),
    ("name: x\npruning:\n  strategies: [cosine, magic]\n", "unknown pruning strategy 'magic'"),
    ("name: x\nsimilarity:\n  n_samples: many\n", "'similarity.n_samples' must be an integer"),
    ("name: x\nsimilarity:\n  batch_size: 0\n", "similarity.batch_size must be >= 1"),
    ("name: x\ndata:\n  heldout_fraction: 1.5\n", r"data.heldout_fraction must be in \(0, 1\)"),
    ("name: x\npruning:\n  remove: [2, -1]\n", "pruning.remove must be"),
    ("name: x\ndevice: tpu\n", "device must be"),
    ("- just\n- a list\n", "must be a mapping"),
    ("name: [unclosed\n", "not valid YAML"),
])
def test_bad_profiles_are_named(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_profile(_write(tmp_path, text))


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown profile 'nosuch'; known profiles: .*paper.*smoke"):
        load_profile("nosuch")


def test_overrides_merge_into_sections():
    profile = load_profile("smoke", {"similarity": {"n_samples": 3}})
    assert profile.similarity.n_samples == 3
    assert profile.similarity.max_length == load_profile("smoke").similarity.max_length


def test_more_exposure_candidates_than_secrets_exist_is_refused():
    with pytest.raises(ConfigError, match="memorization.n_candidates must be below 9999"):
        load_profile("smoke", {"memorization": {"n_candidates": 10000}})
