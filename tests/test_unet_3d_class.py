"""ClassConditionedUNet3DModel: shapes, conditioning, validation, saving, dtypes, checkpointing, learning."""

import copy

import pytest
import torch

from talking_head.constants import NULL_EMOTION, NUM_EMOTIONS
from talking_head.models.unet_3d_class import ClassConditionedUNet3DModel, UNet3DClassOutput


TINY = dict(sample_size=16, in_channels=4, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
            norm_num_groups=4)


def tiny_model(seed=0, perturb=True, **overrides):
    torch.manual_seed(seed)
    model = ClassConditionedUNet3DModel(**{**TINY, **overrides})
    if perturb:
        # conv_out starts at zero (the model predicts 0); give it weights so the output depends on the input.
        torch.nn.init.normal_(model.conv_out.weight, std=0.1)
    return model.eval()


def sample(b=2, f=3, h=16, w=16, c=4, seed=0):
    return torch.randn(b, c, f, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("frames, height, width", [(1, 16, 16), (3, 16, 24), (5, 8, 32)])
def test_output_shape_any_frame_count_and_non_square(frames, height, width):
    model = tiny_model()
    with torch.no_grad():
        out = model(sample(f=frames, h=height, w=width), 10, torch.tensor([0, 1]))
    assert isinstance(out, UNet3DClassOutput)
    assert out.sample.shape == (2, 3, frames, height, width)
    with torch.no_grad():
        (as_tuple,) = model(sample(f=frames, h=height, w=width), 10, torch.tensor([0, 1]), return_dict=False)
    assert torch.equal(as_tuple, out.sample)


def test_untrained_model_predicts_zero():
    model = tiny_model(perturb=False)
    with torch.no_grad():
        assert torch.count_nonzero(model(sample(), 3).sample) == 0


def test_timestep_scalar_tensor_and_per_sample():
    model = tiny_model()
    x, labels = sample(), torch.tensor([2, 5])
    with torch.no_grad():
        ref = model(x, 7, labels).sample
        for t in (torch.tensor(7), torch.tensor([7]), torch.tensor([7, 7]), 7.0):
            assert torch.allclose(model(x, t, labels).sample, ref, atol=1e-6)
        per_sample = model(x, torch.tensor([7, 900]), labels).sample
        alone = model(x[1:], 900, labels[1:]).sample
    assert torch.allclose(per_sample[0], ref[0], atol=1e-6)
    assert torch.allclose(per_sample[1:], alone, atol=1e-5)
    assert not torch.allclose(per_sample[1], ref[1])  # the timestep matters


def test_class_labels_condition_the_output_and_none_is_the_null_class():
    model = tiny_model(num_class_embeds=NUM_EMOTIONS)
    x = sample()
    with torch.no_grad():
        a = model(x, 10, torch.tensor([0, 0])).sample
        b = model(x, 10, torch.tensor([5, 5])).sample
        null = model(x, 10, torch.tensor([NULL_EMOTION, NULL_EMOTION])).sample
        none = model(x, 10).sample
        broadcast = model(x, 10, 5).sample
    assert not torch.allclose(a, b)
    assert not torch.allclose(a, null)
    assert torch.equal(none, null)
    assert torch.allclose(broadcast, b, atol=1e-6)
    assert model.class_embedding.num_embeddings == NUM_EMOTIONS + 1


def test_bad_sizes_and_labels_raise():
    model = tiny_model()
    x = sample()
    with pytest.raises(ValueError, match=r"multiples of 2 .* got H=15, W=16"):
        model(sample(h=15), 1)
    deep = tiny_model(block_out_channels=(4, 8, 8))
    with pytest.raises(ValueError, match=r"multiples of 4 .* got H=16, W=18"):
        deep(sample(h=16, w=18), 1)
    with pytest.raises(ValueError, match=r"sample must be \(B, C, F, H, W\), got shape \(2, 4, 16, 16\)"):
        model(torch.zeros(2, 4, 16, 16), 1)
    with pytest.raises(ValueError, match="in_channels=4"):
        model(sample(c=7), 1)
    with pytest.raises(ValueError, match=r"class_labels must be in \[0, 8\]"):
        model(x, 1, torch.tensor([0, 9]))
    with pytest.raises(ValueError, match=r"class_labels must be in \[0, 8\]"):
        model(x, 1, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="integer class ids"):
        model(x, 1, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"class_labels must be a scalar or a \(2,\) tensor, got shape \(3,\)"):
        model(x, 1, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"timestep must be a scalar or a \(2,\) tensor"):
        model(x, torch.tensor([1, 2, 3]))


def test_bad_config_raises():
    with pytest.raises(ValueError, match="norm_num_groups \\(3\\) must divide every entry"):
        ClassConditionedUNet3DModel(block_out_channels=(8, 16), norm_num_groups=3)
    with pytest.raises(ValueError, match="block_out_channels must be a non-empty"):
        ClassConditionedUNet3DModel(block_out_channels=())
    with pytest.raises(ValueError, match="layers_per_block must be a positive integer"):
        ClassConditionedUNet3DModel(block_out_channels=(8,), norm_num_groups=4, layers_per_block=0)


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model(num_class_embeds=5, dropout=0.0)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = ClassConditionedUNet3DModel.from_pretrained(tmp_path).eval()
    assert loaded.config.num_class_embeds == 5
    assert tuple(loaded.config.block_out_channels) == (8, 16)
    assert loaded.config.in_channels == 4 and loaded.config.sample_size == 16
    x, labels = sample(), torch.tensor([1, 5])
    with torch.no_grad():
        assert torch.equal(model(x, 42, labels).sample, loaded(x, 42, labels).sample)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(dtype):
    model = tiny_model()
    low = copy.deepcopy(model).to(dtype=dtype)
    x, labels = sample(), torch.tensor([1, 2])
    with torch.no_grad():
        ref = model(x, 10, labels).sample
        out = low(x.to(dtype), torch.tensor(10), labels).sample
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max() + 0.05


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_model().train()
    x, target, labels = sample(), sample(c=3, seed=1), torch.tensor([3, 8])

    def grads():
        model.zero_grad()
        torch.nn.functional.mse_loss(model(x, 100, labels).sample, target).backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    plain = grads()
    model.enable_gradient_checkpointing()
    assert model.is_gradient_checkpointing
    checkpointed = grads()
    model.disable_gradient_checkpointing()
    assert not model.is_gradient_checkpointing
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6), name
    assert plain["down_blocks.0.resnets.0.conv1.weight"].abs().sum() > 0  # gradients reach the first block


def test_a_few_steps_reduce_the_loss():
    model = tiny_model(perturb=False).train()  # from the real (zero-initialised) start
    x, target = sample(), sample(c=3, seed=1)
    labels, t = torch.tensor([1, 4]), torch.tensor([10, 500])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = torch.nn.functional.mse_loss(model(x, t, labels).sample, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_condition_skip_starts_from_the_unmasked_reference(tmp_path):
    model = tiny_model(perturb=False, in_channels=7, condition_skip=True)
    x = sample(c=7)
    x[:, 6:7] = (x[:, 6:7] > 0).float()  # a binary mask channel
    with torch.no_grad():
        out = model(x, 50, torch.tensor([0, 1])).sample
    # Zero-initialised conv_out: the untrained model returns the reference where there is no mask noise, 0 inside.
    assert torch.equal(out, x[:, 3:6] * (1 - x[:, 6:7]))
    torch.nn.init.normal_(model.conv_out.weight, std=0.1)
    model.save_pretrained(tmp_path)
    loaded = ClassConditionedUNet3DModel.from_pretrained(tmp_path).eval()
    assert loaded.config.condition_skip is True
    with torch.no_grad():
        assert torch.equal(loaded(x, 50).sample, model(x, 50).sample)
    with pytest.raises(ValueError, match="condition_skip needs in_channels=7"):
        ClassConditionedUNet3DModel(**{**TINY, "condition_skip": True})
