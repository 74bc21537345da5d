"""Tests for markup2im.original: importing the checkpoints released by the paper's authors.

The importer is checked against an independent description of the authors' model
(tests/fork_reference.py): the exact layout of their four models (tests/data/original-keys, read
off the original), where each tensor lands, and that the imported denoiser computes what the
reference forward pass computes. Position tables there have the fork's fixed 64 rows x 320
columns and 1025 text positions, longer than what a small model uses, so the slicing is exercised
too. Then the released path for real: the workflow on full-size checkpoints in the authors' math
layout (slow), and `draw`, the demo and the pipeline on an imported model.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from fork_reference import (
    COL,
    ROW,
    TEXT,
    Arch,
    fork_shapes,
    random_fork_state,
    random_state,
    reference_forward,
    reference_keys,
)
from PIL import Image, ImageDraw

from markup2im.cli import main as cli_main
from markup2im.data.datasets import DatasetInfo, write_dataset_info
from markup2im.errors import ModelError
from markup2im.model import Markup2ImModel
from markup2im.models.denoiser import MarkupUNet
from markup2im.original import (
    PROVENANCE_FILE,
    convert_state_dict,
    import_original,
    load_original_state_dict,
    original_layout,
    original_shapes,
)
from markup2im.presets import DOMAINS, get_model_preset

OFFLINE_WIDTH = 64  # hidden size of the offline encoder (the cross-attention width)
# the cross-attention width of the paper's encoders: gpt-neo-125M, ChemBERTa-77M-MLM (molecules)
ENCODER_WIDTH = {"math": 768, "tables": 768, "music": 768, "molecules": 384}


pytestmark = pytest.mark.usefixtures("one_thread")


# ---- shared fixtures ---------------------------------------------------------------------------

TINY = Arch.of("tiny", in_channels=1, context=OFFLINE_WIDTH)
TINY_HW = (16, 32)  # tiny has 4 levels: 16x32, 8x16, 4x8, 2x4


def _import(tmp: Path, state: dict, *, domain: str = "math", hw=TINY_HW, name="model") -> Path:
    checkpoint = tmp / f"{name}.pt.100"
    torch.save(state, checkpoint)
    out = tmp / name
    import_original(
        checkpoint, out, domain=domain, encoder="offline", model_preset="tiny",
        height=hw[0], width=hw[1], max_markup_length=32,
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def fork_state() -> dict[str, torch.Tensor]:
    return random_fork_state(TINY, seed=0)


@pytest.fixture(scope="module")
def imported(tmp_path_factory, fork_state) -> Path:
    return _import(tmp_path_factory.mktemp("import"), fork_state)


def _tiny_unet(channels: int = 1) -> MarkupUNet:
    return MarkupUNet.from_preset(
        get_model_preset("tiny"), height=TINY_HW[0], width=TINY_HW[1], channels=channels,
        cross_attention_dim=OFFLINE_WIDTH, max_text_positions=33,
    )  # fmt: skip


# ---- layout ------------------------------------------------------------------------------------


def _compatible(entry_kind: str, ours: tuple[int, ...], theirs: tuple[int, ...]) -> bool:
    if entry_kind == "conv1x1":
        return theirs == (*ours, 1, 1)
    if entry_kind == "leading_rows":
        return theirs[1:] == ours[1:] and theirs[0] >= ours[0]
    return theirs == ours


def _paper_unet(domain: str) -> MarkupUNet:
    """Our paper-preset denoiser of ``domain`` (on the meta device: shapes only)."""
    spec = DOMAINS[domain]
    with torch.device("meta"):
        return MarkupUNet.from_preset(
            get_model_preset("paper"), height=spec.height, width=spec.width,
            channels=spec.channels, cross_attention_dim=ENCODER_WIDTH[domain],
            max_text_positions=1025,
        )  # fmt: skip


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_expected_layout_is_exactly_the_authors_model(domain):
    """The entries the importer expects, names and shapes, are those of the authors' model of
    each domain (tests/data/original-keys, read off the original): 999 entries, 208,996,609
    parameters (194,444,163 for molecules, RGB with 384-wide ChemBERTa states)."""
    reference = reference_keys(domain)
    expected = original_shapes(_paper_unet(domain))
    assert len(reference) == 999
    assert sum(map(math.prod, reference.values())) == (
        194_444_163 if domain == "molecules" else 208_996_609
    )
    assert sorted(set(expected) - set(reference)) == []  # entries we would ask for wrongly
    assert sorted(set(reference) - set(expected)) == []  # entries we would leave out
    assert expected == reference
    # the independent description of the fork agrees, so the tests below that use it at other
    # sizes test against the authors' layout
    spec = DOMAINS[domain]
    assert fork_shapes(Arch.of("paper", spec.channels, ENCODER_WIDTH[domain])) == reference


def test_paper_layout_kinds():
    layout = original_layout(_paper_unet("math"))
    assert {e.kind for e in layout} == {"copy", "conv1x1", "leading_rows"}
    assert sum(e.kind == "conv1x1" for e in layout) == 2 * 21  # proj_in, proj_out x 21 blocks
    assert sum(e.kind == "leading_rows" for e in layout) == 3 * 21  # wpe_h, wpe_w, wpe_l


def test_rgb_layout_matches_too():
    a = Arch.of("tiny", in_channels=3, context=OFFLINE_WIDTH)
    layout = original_layout(_tiny_unet(channels=3))
    shapes = fork_shapes(a)
    assert {e.original for e in layout} == set(shapes)
    assert all(_compatible(e.kind, e.shape, shapes[e.original]) for e in layout)


# ---- import ------------------------------------------------------------------------------------


def test_import_writes_a_model_directory_that_loads_strictly(imported, fork_state):
    model = Markup2ImModel.from_pretrained(imported)
    ours = model.denoiser.state_dict()
    # every entry of the file was used, every parameter filled (load_state_dict strict=True)
    assert len(ours) == len(fork_state)
    fresh = _tiny_unet()
    missing, unexpected = fresh.load_state_dict(ours, strict=True)
    assert not missing and not unexpected
    record = json.loads((imported / PROVENANCE_FILE).read_text())
    assert record["entries"] == len(fork_state) and len(record["sha256"]) == 64
    assert (model.height, model.width, model.channels) == (*TINY_HW, 1)
    assert model.noise_scheduler().config.num_train_timesteps == 1000


def test_known_tensors_land_where_they_must(imported, fork_state):
    ours = Markup2ImModel.from_pretrained(imported).denoiser.state_dict()
    block = "down_blocks.3.attentions.0."
    # a 1x1 convolution kernel becomes the linear weight
    kernel = fork_state[block + "proj_in.weight"]
    assert torch.equal(ours["down_levels.3.attentions.0.proj_in.weight"], kernel[:, :, 0, 0])
    assert torch.equal(
        ours["up_levels.0.attentions.1.proj_out.weight"],
        fork_state["up_blocks.0.attentions.1.proj_out.weight"][:, :, 0, 0],
    )
    # position tables: the rows and columns this level (2x4) uses, the markup positions kept
    assert torch.equal(
        ours["down_levels.3.attentions.0.row_embedding.weight"], fork_state[block + ROW][:2]
    )
    assert torch.equal(
        ours["down_levels.3.attentions.0.col_embedding.weight"], fork_state[block + COL][:4]
    )
    assert torch.equal(
        ours["mid_block.attention.text_position_embedding.weight"],
        fork_state["mid_block.attentions.0." + TEXT][:33],
    )
    pairs = {
        "down_levels.3.attentions.0.attn2.to_k.weight": block
        + "transformer_blocks.0.attn2.to_k.weight",
        "down_levels.3.attentions.0.ff.net.0.proj.weight": block
        + "transformer_blocks.0.ff.net.0.proj.weight",
        "down_levels.3.attentions.0.norm3.bias": block + "transformer_blocks.0.norm3.bias",
        "down_levels.2.resnets.0.conv_shortcut.weight": "down_blocks.2.resnets.0.conv_shortcut.weight",
        "down_levels.0.downsample.conv.weight": "down_blocks.0.downsamplers.0.conv.weight",
        "up_levels.2.upsample.conv.bias": "up_blocks.2.upsamplers.0.conv.bias",
        "mid_block.attention.attn1.to_q.weight": "mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight",
        "mid_block.resnets.1.time_emb_proj.weight": "mid_block.resnets.1.time_emb_proj.weight",
        "time_embedding.linear_2.bias": "time_embedding.linear_2.bias",
        "conv_out.weight": "conv_out.weight",
    }
    for our_key, their_key in pairs.items():
        assert torch.equal(ours[our_key], fork_state[their_key]), our_key


def test_conv_1x1_equals_the_linear_layer_on_every_pixel(fork_state):
    kernel = fork_state["mid_block.attentions.0.proj_in.weight"]
    bias = fork_state["mid_block.attentions.0.proj_in.bias"]
    weights = convert_state_dict(fork_state, _tiny_unet())
    linear = weights["mid_block.attention.proj_in.weight"]
    x = torch.randn(1, kernel.shape[1], 3, 5, generator=torch.Generator().manual_seed(3))
    conv = F.conv2d(x, kernel, bias)
    tokens = F.linear(x.permute(0, 2, 3, 1), linear, weights["mid_block.attention.proj_in.bias"])
    torch.testing.assert_close(tokens.permute(0, 3, 1, 2), conv, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("domain", "channels", "hw"), [("math", 1, TINY_HW), ("molecules", 3, (24, 24))]
)
def test_imported_denoiser_computes_what_the_original_computes(tmp_path, domain, channels, hw):
    arch = Arch.of("tiny", in_channels=channels, context=OFFLINE_WIDTH)
    state = random_fork_state(arch, seed=channels)
    model = Markup2ImModel.from_pretrained(_import(tmp_path, state, domain=domain, hw=hw))
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, channels, *hw, generator=g)
    context = torch.randn(1, 7, OFFLINE_WIDTH, generator=g)
    mask = torch.ones(1, 7, dtype=torch.bool)
    double = {k: v.double() for k, v in state.items()}
    for t in (0, 537, 999):
        timesteps = torch.tensor([t])
        with torch.no_grad():
            ours = model(x, timesteps, context, mask)
            theirs = reference_forward(double, arch, x.double(), timesteps, context.double())
        assert theirs.abs().max() > 0.1  # a live network, not a zero output
        torch.testing.assert_close(ours.double(), theirs, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_paper_size_math_model_computes_what_the_original_computes():
    """The whole paper model at 64x320 (six levels, 21 transformer blocks, 32 groups, a 768-dim
    context): about 10 s and 2 GB on one CPU thread."""
    arch = Arch.of("paper", in_channels=1, context=768)
    state = random_fork_state(arch, seed=11)
    with torch.device("meta"):
        unet = MarkupUNet.from_preset(
            get_model_preset("paper"), height=64, width=320, channels=1,
            cross_attention_dim=768, max_text_positions=1025,
        )  # fmt: skip
    unet.load_state_dict(convert_state_dict(state, unet), strict=True, assign=True)
    unet.eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 1, 64, 320, generator=g)
    context = torch.randn(1, 12, 768, generator=g)
    timesteps = torch.tensor([700])
    with torch.no_grad():
        ours = unet(x, timesteps, context, torch.ones(1, 12, dtype=torch.bool))
        theirs = reference_forward(state, arch, x, timesteps, context)
    assert theirs.abs().max() > 0.1
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


def test_checkpoint_from_a_distributed_run_loses_its_module_prefix(tmp_path, fork_state):
    path = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in fork_state.items()}, path)
    loaded = load_original_state_dict(path)
    assert set(loaded) == set(fork_state)


# ---- errors name the entry ---------------------------------------------------------------------


def _problem(state: dict) -> str:
    with pytest.raises(ModelError) as info:
        convert_state_dict(state, _tiny_unet(), source="released.pt")
    return str(info.value)


def test_unknown_entry_fails_naming_it(fork_state):
    state = dict(fork_state)
    state["down_blocks.3.attentions.0.extra_gate.weight"] = torch.zeros(3)
    message = _problem(state)
    assert "released.pt" in message
    assert "unexpected entry down_blocks.3.attentions.0.extra_gate.weight (3,)" in message


def test_wrong_shape_fails_naming_it(fork_state):
    state = dict(fork_state)
    key = "up_blocks.1.resnets.0.conv1.weight"
    state[key] = torch.zeros(5, 5, 3, 3)
    message = _problem(state)
    assert key in message and "(5, 5, 3, 3)" in message
    # a 1x1 kernel given as a plain matrix is a wrong shape as well
    state = dict(fork_state)
    key = "mid_block.attentions.0.proj_out.weight"
    state[key] = state[key][:, :, 0, 0]
    assert f"{key}: shape (32, 32), expected (32, 32, 1, 1)" in _problem(state)


def test_missing_entry_and_short_position_table_fail_naming_them(fork_state):
    state = dict(fork_state)
    del state["conv_norm_out.bias"]
    row = "down_blocks.3.attentions.0." + ROW
    state[row] = state[row][:1]
    message = _problem(state)
    assert "missing entry conv_norm_out.bias" in message
    assert f"{row}: shape (1, 16), expected (at least 2, 16)" in message


def _meta_state(domain: str) -> dict[str, torch.Tensor]:
    """The authors' model of ``domain`` as shapes only (meta tensors: no memory)."""
    return {k: torch.empty(s, device="meta") for k, s in reference_keys(domain).items()}


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_the_authors_layout_converts_at_full_size(domain):
    weights = convert_state_dict(_meta_state(domain), _paper_unet(domain))
    assert len(weights) == 999


def test_a_checkpoint_of_another_domain_fails_naming_the_file_and_first_entry():
    """Molecules (RGB, 384-wide ChemBERTa states) imported as math: the same names, other shapes."""
    with pytest.raises(ModelError) as info:
        convert_state_dict(_meta_state("molecules"), _paper_unet("math"), source="mol.pt.100")
    lines = str(info.value).splitlines()
    assert lines[0].startswith("mol.pt.100: not a checkpoint of this model")
    assert lines[1].strip() == "conv_in.weight: shape (128, 3, 3, 3), expected (128, 1, 3, 3)"
    assert any("attn2.to_k.weight: shape (256, 384), expected (256, 768)" in x for x in lines)


def test_a_file_that_is_not_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ModelError, match=f"{path}: not a state dict .*: the file holds a list"):
        load_original_state_dict(path)
    # a training checkpoint that wraps the weights: the first entry that is not a tensor is named
    wrapped = tmp_path / "trainer_state.pt"
    torch.save({"model": {"conv_in.weight": torch.zeros(1)}, "epoch": 3}, wrapped)
    with pytest.raises(ModelError, match=f"{wrapped}: .*entry 'model' is a dict, not a tensor"):
        load_original_state_dict(wrapped)
    with pytest.raises(ModelError, match="does not exist"):
        load_original_state_dict(tmp_path / "absent.pt")
    pointer = tmp_path / "model_e100_lr0.0001.pt.100"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 836\n")
    with pytest.raises(ModelError, match=f"{pointer} is a Git LFS pointer"):
        load_original_state_dict(pointer)


def test_a_truncated_file_is_refused_naming_it(tmp_path, fork_state):
    path = tmp_path / "model_e100_lr0.0001.pt.100"
    torch.save(fork_state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # an interrupted download
    with pytest.raises(ModelError, match=f"{path}: cannot read as a torch state dict") as info:
        load_original_state_dict(path)
    assert "truncated" in str(info.value)


# ---- the command line, then generate and evaluate with the imported model -----------------------


def _tables_dataset(root: Path) -> Path:
    features = datasets.Features(
        {"html": datasets.Value("string"), "filename": datasets.Value("string"),
         "image": datasets.Image()}
    )  # fmt: skip
    splits = {}
    for split, n in {"train": 1, "validation": 1, "test": 2}.items():
        images = []
        for i in range(n):
            image = Image.new("L", (64, 64), 255)
            ImageDraw.Draw(image).rectangle([4 + 9 * i, 6, 30, 20 + i], fill=0)
            images.append(image)
        splits[split] = datasets.Dataset.from_dict(
            {
                "html": [f"<table><tr><td>{i}</td></tr></table>" for i in range(n)],
                "filename": [f"{split}_{i}.png" for i in range(n)],
                "image": images,
            },
            features=features,
        )
    datasets.DatasetDict(splits).save_to_disk(str(root))
    write_dataset_info(root, DatasetInfo("tables", "html", 64, 64, 1))
    return root


def test_cli_import_then_generate_and_evaluate(tmp_path, capsys):
    checkpoint = tmp_path / "model_e100_lr0.0001.pt.100"
    torch.save(random_fork_state(TINY, seed=7), checkpoint)
    out = tmp_path / "imported"
    code = cli_main(
        ["import-original", "--checkpoint", str(checkpoint), "--domain", "tables",
         "--encoder", "offline", "--model-preset", "tiny", "--output-dir", str(out)]
    )  # fmt: skip
    assert code == 0
    data = _tables_dataset(tmp_path / "tables")
    samples = tmp_path / "samples"
    code = cli_main(
        ["generate", "--model-dir", str(out), "--dataset-dir", str(data), "--output-dir",
         str(samples), "--sampler", "ddim", "--num-inference-steps", "2", "--device", "cpu"]
    )  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in (samples / "images").iterdir()) == ["test_0.png", "test_1.png"]
    with Image.open(samples / "images" / "test_0.png") as image:
        assert image.size == (64, 64)
    code = cli_main(
        ["evaluate", "--pred-dir", str(samples / "images"), "--gold-dir", str(samples / "gold"),
         "--output", str(tmp_path / "metrics.csv"), "--workers", "1"]
    )  # fmt: skip
    assert code == 0
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert header == "filename,dtw,dtw_shift,ssim,mse"


def test_cli_import_of_a_foreign_file_exits_2_naming_the_entry(tmp_path, capsys):
    checkpoint = tmp_path / "other.pt"
    torch.save({"encoder.layer.0.weight": torch.zeros(2, 2)}, checkpoint)
    code = cli_main(
        ["import-original", "--checkpoint", str(checkpoint), "--domain", "tables",
         "--encoder", "offline", "--model-preset", "tiny", "--output-dir", str(tmp_path / "o")]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "unexpected entry encoder.layer.0.weight (2, 2)" in err
    assert "missing entry conv_in.weight" in err
    assert not (tmp_path / "o").exists()


def test_cli_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit):
        cli_main(["import-original", "--help"])
    text = capsys.readouterr().out
    for flag in ("--checkpoint", "--domain", "--encoder", "--output-dir"):
        assert flag in text
    assert np.all([d in text for d in DOMAINS])


# ---- an imported model is used like a trained one: draw, the demo, the pipeline ----------------


def test_draw_and_the_readme_example_on_an_imported_model(imported, tmp_path, capsys):
    from markup2im.pipeline import Markup2ImPipeline

    out, gif = tmp_path / "out.png", tmp_path / "out.gif"
    code = cli_main(
        ["draw", "--model-dir", str(imported), "x^2+3-y_1=n", "--output", str(out),
         "--gif", str(gif), "--steps", "2", "--seed", "4", "--device", "cpu"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    with Image.open(out) as image:
        assert (image.size, image.mode) == ((TINY_HW[1], TINY_HW[0]), "L")
        drawn = np.asarray(image)
    with Image.open(gif) as animation:
        assert animation.n_frames > 1
    # the README's Python example, as written there, with this model directory
    pipe = Markup2ImPipeline.from_pretrained(str(imported))
    drawing = pipe([r"x^2+3-y_1=n", r"\frac{1}{y}"], sampler="ddim", steps=10, seed=0)
    drawing.images[0].save(tmp_path / "example.png")
    assert [i.size for i in drawing.images] == [(TINY_HW[1], TINY_HW[0])] * 2
    # the command line drew what the pipeline draws (markup alone, example 0 of its seed)
    again = pipe("x^2+3-y_1=n", sampler="ddim", steps=2, seed=4).images[0]
    assert (np.asarray(again) == drawn).all()


def test_demo_on_an_imported_model(imported, tmp_path):
    from markup2im.demo import Demo

    demo = Demo.load(imported, tmp_path, device="cpu")
    assert demo.spec.name == "math"  # recorded by the import (original_checkpoint.json)
    assert demo.describe().startswith(f"math model, {TINY_HW[1]}x{TINY_HW[0]} grayscale")
    result = demo.compare("x^2", steps=2, seed=1)
    assert result.notes == []
    assert result.image is not None and result.image.size == (TINY_HW[1], TINY_HW[0])
    assert result.animation is not None and result.animation.is_file()
    # LaTeX's rendering of the same markup at the model's size, and their scores
    assert result.rendered is not None, result.render_error
    assert result.dtw is not None and result.dtw >= 0


# ---- the released path for real: the workflow on full-size checkpoints ---------------------------

RELEASED_FORMULAS = [r"x^{2}+y^{2}=z^{2}", r"\frac{a}{b}", r"\sqrt{x+1}", r"e^{i\pi}+1=0"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _encoder_768(directory: Path) -> Path:
    """A local, random, one-layer GPT-Neo with gpt-neo-125M's width (768) over bytes: the
    cross-attention width the released math model expects, no hub."""
    from transformers import ByT5Tokenizer, GPTNeoConfig, GPTNeoModel

    tokenizer = ByT5Tokenizer()
    config = GPTNeoConfig(
        vocab_size=len(tokenizer), hidden_size=768, num_layers=1, num_heads=12,
        attention_types=[[["global"], 1]], max_position_embeddings=1100, intermediate_size=256,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    GPTNeoModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _released_config(workdir: Path) -> dict:
    """config/released.yaml for math only, on four formulas rendered here (two test ones, at the
    paper's 320x64), the local encoder, 2-step DDIM, on the CPU, without CLIP."""
    from test_workflow import RELEASED  # the workflow tests' paths and runner, reused

    config = yaml.safe_load(RELEASED.read_text())
    math_ = config["datasets"]["math"]
    (workdir / "formulas.txt").write_text("\n".join(RELEASED_FORMULAS) + "\n", encoding="utf-8")
    math_["source"] = {
        "render": {"markup_file": "formulas.txt", "train": 1, "validation": 1, "test": 2}
    }
    math_["model"]["encoder"] = str(_encoder_768(workdir / "encoder-768"))
    math_["generate"].update(batch_size=2, frames=1)
    math_["gpu"] = 0
    config["datasets"] = {"math": math_}
    config["samplers"] = {"ddim2": {"sampler": "ddim", "steps": 2, "frames_every": 1}}
    config["evaluate"] = {"clip_model": None}
    small = {"threads": 1, "mem_mb": 4000, "runtime": 30}
    config["resources"] = {k: dict(small) for k in config["resources"]}
    return config


@pytest.mark.slow
def test_released_path_runs_for_real(tmp_path):
    """Random full-size checkpoints in the authors' math layout (tests/data/original-keys) for
    both methods: the workflow imports them, generates, evaluates, and builds the tables (with
    the paired comparison) and the report; nothing is trained. About 2 minutes on 2 cores,
    3.2 GB of files (removed when it passes)."""
    from test_workflow import RUN_TIMEOUT, assert_ok, job_counts, output_of, snakemake, write_config

    workdir = tmp_path / "run"
    workdir.mkdir()
    config = _released_config(workdir)
    for seed, entry in enumerate(config["datasets"]["math"]["released"].values()):
        checkpoint = workdir / entry["checkpoint"]
        checkpoint.parent.mkdir(parents=True)
        torch.save(random_state(reference_keys("math"), seed=seed), checkpoint)
    configfile = write_config(tmp_path / "released.yaml", config)

    proc = snakemake(workdir, "--configfile", configfile, timeout=RUN_TIMEOUT)
    assert_ok(proc, workdir)
    counts = job_counts(output_of(proc))
    assert counts["import_original"] == 2 and counts["generate"] == counts["evaluate"] == 2
    assert "train" not in counts and "loss_curves" not in counts
    for method in ("baseline", "scheduled_sampling"):
        model = workdir / "results" / "math" / method / "released" / "model"
        record = json.loads((model / PROVENANCE_FILE).read_text())
        assert (record["entries"], record["parameters"]) == (999, 208_996_609)
        images = sorted((model.parents[1] / "ddim2" / "samples" / "images").glob("*.png"))
        assert len(images) == 2 and Image.open(images[0]).size == (320, 64)

    table = read_csv(workdir / "results" / "summary" / "metrics_table.csv")
    assert [(r["dataset"], r["method"]) for r in table] == [
        ("math", "released baseline (ddim2)"),
        ("math", "released scheduled_sampling (ddim2)"),
    ]
    assert all(math.isfinite(float(r["dtw_mean"])) and int(r["count"]) == 2 for r in table)
    paired = read_csv(workdir / "results" / "summary" / "paired_table.csv")
    assert {(r["dataset"], r["sampler"]) for r in paired} == {("math", "ddim2 (released models)")}
    assert {r["metric"] for r in paired} >= {"dtw", "ssim", "mse"}

    report = tmp_path / "report.html"
    proc = snakemake(workdir, "--configfile", configfile, "--report", report, timeout=RUN_TIMEOUT)
    assert_ok(proc, workdir)
    assert report.stat().st_size > 0
    shutil.rmtree(workdir / "released")  # 0.8 GB checkpoints and models: not kept by pytest
    for model in workdir.glob("results/math/*/released"):
        shutil.rmtree(model)
