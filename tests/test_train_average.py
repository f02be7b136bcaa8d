"""The exponential moving average of the weights (TrainConfig.average_decay, WeightAverage)."""
import pytest
import torch

from mud_iknn.train import TrainConfig, WeightAverage, load_checkpoint, reestimate_batchnorm, train

from synthetic import Blobs


pytestmark = pytest.mark.usefixtures("one_thread")


def _config(tmp_path, **kwargs):
    base = dict(steps=4, batch_size=4, patch_size=32, lr=1e-3, backbone="densenet_tiny", num_workers=0,
                device="cpu", out_dir=str(tmp_path), checkpoint_every=0, log_every=1, progress=False,
                calibrate_images=0)
    base.update(kwargs)
    return TrainConfig(**base)


def _weights(decay, steps):
    """By hand: the weight of step i's weights in the average after ``steps`` updates."""
    d = [None, None] + [min(decay, (1 + t) / (10 + t)) for t in range(2, steps + 1)]  # d[t], t >= 2
    out = []
    for i in range(1, steps + 1):
        w = 1.0 if i == 1 else 1 - d[i]
        for t in range(i + 1, steps + 1):
            w *= d[t]
        out.append(w)
    return out


def test_average_is_the_decay_weighted_mean_of_the_steps():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    decay = 0.6
    average = WeightAverage(net, decay)
    history = []
    for t in range(5):
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn_like(p))
        net(torch.randn(4, 3))  # moves BatchNorm's running statistics and its step counter
        history.append({k: v.clone() for k, v in net.state_dict().items()})
        average.update(net)
    assert average.updates == 5
    # d_t = min(0.6, (1 + t) / (10 + t)) = 3/12, 4/13, 5/14, 6/15 for t = 2..5
    weights = _weights(decay, 5)
    assert abs(sum(weights) - 1) < 1e-12 and weights[-1] == 1 - 6 / 15
    for name, value in average.model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            assert value.item() == history[-1][name].item() == 5  # the last step's, not averaged
            continue
        expected = sum(w * h[name].double() for w, h in zip(weights, history))
        torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6, msg=name)
    # a long run: the horizon is that of the decay, 0.6^(t - i) (1 - 0.6) for the recent steps
    late = _weights(0.6, 200)
    assert abs(late[-1] - 0.4) < 1e-12 and abs(late[-3] - 0.4 * 0.36) < 1e-12
    # the first update is the weights themselves (no pull towards the copy made at construction)
    first = WeightAverage(net, 0.999)
    with torch.no_grad():
        net[0].weight.add_(1.0)
    first.update(net)
    torch.testing.assert_close(first.model[0].weight, net[0].weight)
    assert not first.model.training and not any(p.requires_grad for p in first.model.parameters())
    with pytest.raises(ValueError, match="not the network the average was made of"):
        first.update(torch.nn.Linear(3, 2))
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="decay"):
            WeightAverage(net, bad)
    with pytest.raises(ValueError, match="average_decay"):
        TrainConfig(average_decay=1.5)


def test_training_predicts_with_the_average_and_resumes_it(tmp_path):
    data = Blobs(n=6, size=40)
    decay = 0.5
    steps = []
    snapshots = []

    def keep(step, record):
        steps.append(step)

    # the training weights after each step, from runs of 1, 2, 3 steps (a run is reproducible)
    for n in (1, 2, 3):
        result = train(_config(tmp_path / f"plain{n}", steps=n), data)
        snapshots.append({k: v.clone() for k, v in result["model"].state_dict().items()})
    averaged = train(_config(tmp_path / "avg", steps=3, average_decay=decay, checkpoint_every=2), data)
    weights = _weights(decay, 3)  # d_2 = 3/12, d_3 = min(0.5, 4/13)
    model = averaged["model"]
    for name, value in model.state_dict().items():
        if not value.is_floating_point():
            continue
        expected = sum(w * s[name].double() for w, s in zip(weights, snapshots))
        torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6, msg=name)
    # the checkpoint predicts with the average; it keeps the training weights for resuming
    loaded, config, _ = load_checkpoint(averaged["checkpoint"])
    assert config.average_decay == decay
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name
    state = torch.load(averaged["checkpoint"], weights_only=True)
    for name, value in state["model"].items():
        assert torch.equal(value, snapshots[-1][name]), name
    # a run resumed from its step-2 checkpoint ends with the same average as the uninterrupted one
    train(_config(tmp_path / "resumed", steps=2, average_decay=decay, checkpoint_every=2), data)
    resumed = train(_config(tmp_path / "resumed", steps=3, average_decay=decay, checkpoint_every=2), data,
                    resume=True, on_step=keep)
    assert steps == [3]
    for name, value in resumed["model"].state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name
    # a damaged average names the file
    state["average"] = {"updates": "3"}
    torch.save(state, tmp_path / "damaged.pt")
    with pytest.raises(ValueError, match="damaged.pt.*weight average"):
        load_checkpoint(tmp_path / "damaged.pt")


def test_reestimate_batchnorm_is_the_plain_mean_over_the_batches():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4, momentum=0.3)).eval()
    batches = [torch.randn(5, 3, 6, 7) * (1 + i) + i for i in range(3)]
    with torch.no_grad():
        features = [net[0](b) for b in batches]
    # by hand: the mean over batches of each batch's channel mean and unbiased channel variance
    mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in features]).mean(0)
    var = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in features]).mean(0)
    assert reestimate_batchnorm(net, iter(batches)) == 3
    torch.testing.assert_close(net[1].running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net[1].running_var, var, rtol=1e-5, atol=1e-6)
    assert net[1].momentum == 0.3 and not net.training and net[1].num_batches_tracked.item() == 3
    # no batch: an error, the statistics as they were
    before = net[1].running_mean.clone()
    with pytest.raises(ValueError, match="no batch"):
        reestimate_batchnorm(net, iter([]))
    assert torch.equal(net[1].running_mean, before) and net[1].num_batches_tracked.item() == 3
    # a network whose BatchNorm stays frozen in training mode keeps its statistics
    net.frozen_batchnorm = True
    assert reestimate_batchnorm(net, iter(batches[:1])) == 0 and torch.equal(net[1].running_mean, before)


def test_training_ends_by_reestimating_the_average_batchnorm(tmp_path):
    data = Blobs(n=6, size=40)
    settings = dict(steps=3, average_decay=0.5, frozen_batchnorm=False, checkpoint_every=2)
    kept = train(_config(tmp_path / "kept", average_bn_batches=0, **settings), data)["model"]
    redone = train(_config(tmp_path / "redone", average_bn_batches=2, **settings), data)
    norms = {n: m for n, m in redone["model"].named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert norms and all(m.num_batches_tracked.item() == 2 for m in norms.values())  # reset, then 2 batches
    kept_state = kept.state_dict()
    for name, value in redone["model"].state_dict().items():
        if name.rsplit(".", 1)[0] in norms and name.rsplit(".", 1)[1] in ("running_mean", "running_var"):
            assert not torch.equal(value, kept_state[name]), name  # new statistics ...
        elif value.is_floating_point():
            assert torch.equal(value, kept_state[name]), name  # ... of the same averaged weights
    loaded, _, _ = load_checkpoint(redone["checkpoint"])  # the checkpoint predicts with them
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, redone["model"].state_dict()[name]), name
    # resumed from its step-2 checkpoint, the same statistics as without the interruption
    train(_config(tmp_path / "resumed", average_bn_batches=2, **{**settings, "steps": 2}), data)
    resumed = train(_config(tmp_path / "resumed", average_bn_batches=2, **settings), data, resume=True)
    for name, value in resumed["model"].state_dict().items():
        assert torch.equal(value, redone["model"].state_dict()[name]), name
    # and the average it continues is the uninterrupted run's: the step-2 end's re-estimated
    # statistics do not leak into it (they are kept apart, for predicting). Seen where the longer
    # run's own end does not re-estimate them again:
    train(_config(tmp_path / "longer", average_bn_batches=2, **{**settings, "steps": 2}), data)
    longer = train(_config(tmp_path / "longer", average_bn_batches=0, **settings), data, resume=True)["model"]
    for name, value in longer.state_dict().items():
        assert torch.equal(value, kept_state[name]), name
    with pytest.raises(ValueError, match="average_bn_batches"):
        TrainConfig(average_bn_batches=-1)
