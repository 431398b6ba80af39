"""The tiny VLM pretraining stage: a backbone folder that recipes load by path, and grounded BC from it."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from vla_agents.agent import load_agent, make_agent
from vla_agents.data.hdf5 import DemoWriter
from vla_agents.models.backbones import build_byte_tokenizer, build_word_tokenizer
from vla_agents.policies import list_policies, load_recipe
from vla_agents.sim.corpus import generate_corpus
from vla_agents.train.auxiliary import attention_target_loss
from vla_agents.train.bc import train_bc
from vla_agents.train.pretrain import pretrain_backbone

SMALL = dict(image_size=64, vit_depth=1, llm_layers=2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "c.hdf5"
    generate_corpus(path, scenes=8, seed=0, image_size=64, questions_per_scene=4, progress=False)
    return path


@pytest.fixture(scope="module")
def backbone(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pretrained")
    return pretrain_backbone(corpus, out, steps=4, batch_size=4, overrides=SMALL, save_every=0, progress=False).folder


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 64 px episodes that record the named cube (target_pos, target_uv), as embedded collections do."""
    path = tmp_path_factory.mktemp("demos") / "pick.hdf5"
    rng = np.random.default_rng(0)
    with DemoWriter(path, instruction="pick up the blue cube") as writer:
        for _ in range(2):
            T = 12
            obs = {"agentview_rgb": rng.integers(0, 255, (T, 64, 64, 3), dtype=np.uint8),
                   "eye_in_hand_rgb": rng.integers(0, 255, (T, 64, 64, 3), dtype=np.uint8),
                   "ee_pos": rng.normal(size=(T, 3)), "ee_ori": np.zeros((T, 3)), "gripper_states": np.zeros((T, 2)),
                   "joint_states": np.zeros((T, 7)), "target_pos": rng.normal(size=(T, 3)),
                   "target_uv": rng.uniform(size=(T, 2, 2))}
            writer.add_episode(rng.uniform(-1, 1, (T, 7)), obs)
    return path


def test_word_tokenizer_makes_each_colour_word_one_token(backbone: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(backbone / "tokenizer"))
    for colour in ("red", "green", "blue", "maroon", "teal"):
        ids = tok(f"pick up the {colour} cube", add_special_tokens=False)["input_ids"]
        assert len(ids) == 5 and tok.convert_ids_to_tokens(ids[3]) == colour
    assert tok("Pick up the RED cube.", add_special_tokens=False)["input_ids"][:5] == \
        tok("pick up the red cube", add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in tok("what action should the robot take to pick up the cube?", add_special_tokens=False)["input_ids"]


def test_backbone_round_trip_gives_identical_outputs(backbone: Path) -> None:
    agent = make_agent("oft", "tiny", backbone_path=str(backbone), **SMALL)
    saved = load_file(str(backbone / "vision.safetensors"))
    for name, value in agent.model.backbone.vision.state_dict().items():
        assert torch.equal(value, saved[f"vision.{name}"]), name
    llm = load_file(str(backbone / "llm" / "model.safetensors"))
    ours = agent.model.backbone.llm.model.state_dict()
    assert set(llm) == set(ours) and all(torch.equal(ours[k], v) for k, v in llm.items())
    # a second load gives the same backbone function
    twin = make_agent("oft", "tiny", backbone_path=str(backbone), **SMALL)
    ids = torch.tensor([agent.prompt_ids("pick up the red cube")])
    images = torch.rand(1, 2, 3, 64, 64)
    slots = torch.zeros(1, 3, agent.model.backbone.dim)
    a = agent.model.backbone(images, ids, torch.ones_like(ids), slots).hidden_states[-1]
    b = twin.model.backbone(images, ids, torch.ones_like(ids), slots).hidden_states[-1]
    assert torch.equal(a, b)


def test_bc_from_a_pretrained_backbone_starts_from_its_weights(backbone: Path, demos: Path, tmp_path: Path) -> None:
    result = train_bc("oft", [demos], steps=1, out_dir=tmp_path, lr=0.0, warmup_steps=0, batch_size=2,
                      overrides={**SMALL, "backbone_path": str(backbone)}, progress=False)
    assert {"aux_offset", "aux_cell", "action_loss"} <= set(result.history[0])
    agent = load_agent(tmp_path)  # the saved agent carries the backbone's weights and tokenizer
    llm = load_file(str(backbone / "llm" / "model.safetensors"))
    ours = agent.model.backbone.llm.model.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in llm.items())
    assert agent.prompt_ids("pick up the red cube") == make_agent(
        "oft", "tiny", backbone_path=str(backbone), **SMALL).prompt_ids("pick up the red cube")


def test_vat_takes_the_pretrained_vit_and_tokenizer(backbone: Path, tmp_path: Path) -> None:
    """VAT has no language model: from a backbone folder it takes the ViT (its action module reads every
    layer of it) and the word tokenizer its FiLM conditioning embeds; a saved VAT reloads without the folder."""
    copy = tmp_path / "backbone"
    shutil.copytree(backbone, copy)
    vit = dict(image_size=SMALL["image_size"], vit_depth=SMALL["vit_depth"])
    vat = make_agent("vat", "tiny", backbone_path=str(copy), **vit)
    saved = load_file(str(backbone / "vision.safetensors"))
    trunk = vat.model.backbone.model.state_dict()
    assert set(trunk) == {k[len("vision."):] for k in saved if k.startswith("vision.")}
    assert all(torch.equal(v, saved[f"vision.{k}"]) for k, v in trunk.items())
    words = AutoTokenizer.from_pretrained(str(backbone / "tokenizer"))
    assert vat.prompt_ids("pick up the red cube")[-5:] == words("pick up the red cube", add_special_tokens=False)["input_ids"]
    vat.save_pretrained(tmp_path / "vat")
    shutil.rmtree(copy)
    reloaded = load_agent(tmp_path / "vat")
    assert all(torch.equal(v, reloaded.model.backbone.model.state_dict()[k]) for k, v in trunk.items())
    assert reloaded.prompt_ids("pick up the red cube") == vat.prompt_ids("pick up the red cube")
    with pytest.raises(ValueError, match="vit_depth: recipe 2, backbone 1"):
        make_agent("vat", "tiny", backbone_path=str(backbone), **{**vit, "vit_depth": 2})


@pytest.mark.parametrize("policy", list_policies())
def test_every_tiny_recipe_starts_from_the_shipped_backbone(policy: str) -> None:
    assert load_recipe(policy, "tiny").backbone.backbone_path == "backbones/tiny-embedded"
    shipped = load_file(str(Path(__file__).resolve().parents[1] / "policies/backbones/tiny-embedded/vision.safetensors"))
    agent = make_agent(policy, "tiny")
    vision = agent.model.backbone.model if policy == "vat" else agent.model.backbone.vision
    weights = vision.state_dict()
    assert weights and all(torch.equal(v, shipped[f"vision.{k}"]) for k, v in weights.items())
    if policy != "vat":  # the saved config names the backbone as the recipe does, not by this machine's path
        assert agent.config()["hf_configs"]["llm"]["_name_or_path"] == "backbones/tiny-embedded/llm"


def test_pretraining_resumes_exactly(corpus: Path, tmp_path: Path) -> None:
    straight = pretrain_backbone(corpus, tmp_path / "a", steps=4, batch_size=4, overrides=SMALL, save_every=0, progress=False)
    # a run whose last checkpoint is at step 2 (as if killed after it) resumes there and ends where the straight run does
    pretrain_backbone(corpus, tmp_path / "b", steps=4, batch_size=4, overrides=SMALL, save_every=2, progress=False)
    resumed = pretrain_backbone(corpus, tmp_path / "b", steps=4, batch_size=4, overrides=SMALL, save_every=2,
                                resume=True, progress=False)
    a, b = (load_file(str(r.folder / "llm" / "model.safetensors")) for r in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in resumed.history] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="seed=0.*this run asks for seed=1"):
        pretrain_backbone(corpus, tmp_path / "b", steps=4, batch_size=4, overrides=SMALL, seed=1, resume=True, progress=False)


def test_missing_backbone_fails_before_training(demos: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no backbone folder at .*nowhere.*vla-agents pretrain"):
        train_bc("oft", [demos], steps=1, out_dir=tmp_path, overrides={**SMALL, "backbone_path": str(tmp_path / "nowhere")},
                 progress=False)
    assert not (tmp_path / "model.safetensors").exists()


def test_backbone_of_another_architecture_is_named(backbone: Path) -> None:
    with pytest.raises(ValueError, match="vit_dim: recipe 64, backbone 128"):
        make_agent("oft", "tiny", backbone_path=str(backbone), **{**SMALL, "vit_dim": 64})
    with pytest.raises(ValueError, match="llm_layers: recipe 4, llm/config.json num_hidden_layers 2"):
        make_agent("oft", "tiny", backbone_path=str(backbone), **{**SMALL, "llm_layers": 4})


def test_truncated_or_foreign_backbone_files_are_named(backbone: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(backbone, broken)
    weights = broken / "vision.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="broken/vision.safetensors"):
        make_agent("oft", "tiny", backbone_path=str(broken), **SMALL)
    foreign = tmp_path / "foreign"
    shutil.copytree(backbone, foreign)
    shutil.rmtree(foreign / "tokenizer")
    build_byte_tokenizer().save_pretrained(str(foreign / "tokenizer"))  # 258 tokens for an LLM trained on fewer
    with pytest.raises(ValueError, match="another tokenizer than the one the model was trained with"):
        make_agent("oft", "tiny", backbone_path=str(foreign), **SMALL)
    (foreign / "backbone.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="expected 'vla-agents-backbone'"):
        make_agent("oft", "tiny", backbone_path=str(foreign), **SMALL)


def test_auxiliary_loss_is_off_at_paper_scale_and_needs_recorded_targets(tmp_path: Path) -> None:
    assert all(load_recipe(p, "paper").training.aux_target_weight == 0.0 for p in list_policies())
    assert all(load_recipe(p, "paper").training.aux_attention_weight == 0.0 for p in list_policies())
    assert all(load_recipe(p, "tiny").training.aux_target_weight > 0 for p in list_policies())
    plain = tmp_path / "plain.hdf5"
    rng = np.random.default_rng(0)
    with DemoWriter(plain, instruction="pick up the cube") as writer:
        obs = {"agentview_rgb": rng.integers(0, 255, (4, 64, 64, 3), dtype=np.uint8),
               "eye_in_hand_rgb": rng.integers(0, 255, (4, 64, 64, 3), dtype=np.uint8),
               "ee_pos": np.zeros((4, 3)), "ee_ori": np.zeros((4, 3)), "gripper_states": np.zeros((4, 2)),
               "joint_states": np.zeros((4, 7))}
        writer.add_episode(np.zeros((4, 7)), obs)
    with pytest.raises(ValueError, match="plain.hdf5 do not"):
        train_bc("oft", [plain], steps=1, out_dir=tmp_path / "out", overrides={**SMALL, "backbone_path": None}, progress=False)


def test_attention_loss_is_minus_log_of_the_share_on_the_target_cell() -> None:
    heat = torch.zeros(2, 2, 4)  # 2 x 4 cells per view
    heat[0, 1, 1] = 3.0          # sample 0: 3 of 4 units on row 1, col 1
    heat[0, 0, 0] = 1.0
    heat[1] = 1.0                # sample 1: uniform over 8 cells
    uv = torch.tensor([[[0.3, 0.7], [-1.0, -1.0]],    # view a: col 1 (0.3 * 4), row 1 (0.7 * 2); view b: not in view
                       [[0.1, 0.1], [0.99, 0.99]]])   # uniform: share 1/8 in each view
    loss = attention_target_loss({"a": heat, "b": heat.clone()}, uv, ["a", "b"])
    expected = (-np.log(0.75 + 1e-6) - 2 * np.log(1 / 8 + 1e-6)) / 3  # the mean over the 3 (sample, view) pairs in view
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_bc_attention_loss_moves_the_attention_onto_the_target(demos: Path, tmp_path: Path) -> None:
    """Same seed and data: weighted in, the loss leaves more of the action->vision attention on the target's
    patch than when it is only measured (weight ~0)."""
    def final_attention_loss(weight: float, out: str) -> float:
        result = train_bc("oft", [demos], steps=8, out_dir=tmp_path / out, batch_size=4, warmup_steps=0, lr=3e-3, seed=0,
                          overrides={**SMALL, "backbone_path": None, "aux_target_weight": 0.0, "aux_attention_weight": weight}, progress=False)
        assert {"aux_attention", "action_loss"} <= set(result.history[0]) and "aux_cell" not in result.history[0]
        return float(np.mean([r["aux_attention"] for r in result.history[-2:]]))

    assert final_attention_loss(1.0, "weighted") < final_attention_loss(1e-9, "measured") - 0.05


def test_word_tokenizer_unknown_words() -> None:
    tok = build_word_tokenizer(["pick", "up", "the", "cube"])
    assert tok.convert_ids_to_tokens(tok("pick up the purple cube", add_special_tokens=False)["input_ids"]) == \
        ["pick", "up", "the", "<unk>", "cube"]


def test_patch_labels_mark_each_visible_object_in_its_own_patch(corpus: Path) -> None:
    from vla_agents.data.corpus import read_corpus
    from vla_agents.sim.projection import grid_cell
    from vla_agents.train.pretrain import CorpusBatches, backbone_config

    c = read_corpus(corpus)
    tok = build_word_tokenizer(["where", "is", "the", "cube"])
    batches = CorpusBatches(c, tok, backbone_config("oft-tiny", len(tok), SMALL), (4, 4), seed=0)
    questions = np.arange(len(c))
    batch = batches(questions, train=False)  # centre crop: the cells are grid_cell's
    labels = batch["patch_objects"]
    assert labels.shape == (len(c), 2, 16)
    for row, q in enumerate(questions):
        s = c.qa_scene[q]
        for v in range(2):
            expected = {}
            for k in range(len(c.objects)):
                cell = int(grid_cell(c.uv[s, k, v][None], 4, frame_size=64, crop_area=0.9)[0])
                if c.in_view[s, k, v] and cell >= 0:
                    expected[cell] = k + 1  # a later object in the same patch wins, as in the labeller
            assert {i: int(x) for i, x in enumerate(labels[row, v]) if x} == expected
