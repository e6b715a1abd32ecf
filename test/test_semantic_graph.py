"""Semantic-structural KD (``loss.use_semgraph``): the graph loss, the semantic teachers, a run that resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bagfactory import BagSpec, write_bag
from robust_training import max_weight_difference, tiny_config, train_stop_resume
from safetensors.torch import load_file

from fsmde_core.config import ConfigError, load_config
from fsmde_core.distill.objective import DistillLossConfig, compute_losses
from fsmde_core.distill.semantic_graph import SemanticGraphKD, affinity_graph, graph_kl, region_nodes
from fsmde_core.models.teachers.semantic import (
    SegformerSemanticTeacher,
    SemanticTeacherError,
    SyntheticSemanticTeacher,
)
from fsmde_core.semantics import NUM_CLASSES, ROAD, SKY, VEHICLE, VOID
from fsmde_core.train import Trainer

GRID = (4, 8)


def _features(seed: int = 0, b: int = 3, c: int = 16) -> torch.Tensor:
    return torch.randn(b, c, 8, 16, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ the loss
def test_the_loss_is_zero_for_identical_graphs_and_grows_as_they_differ() -> None:
    torch.manual_seed(0)
    kd = SemanticGraphKD(16, 8, GRID, tau=0.2)
    feats = _features()
    same = kd.student_nodes(feats).detach()
    assert float(kd(feats, same)) < 1e-6
    # a different feature width with the same graph: still zero (only similarities are compared)
    wide = torch.cat([same, same], dim=1)
    assert float(kd(feats, wide)) < 1e-6
    rng = torch.Generator().manual_seed(1)
    losses = [float(kd(feats, same + s * torch.randn(same.shape, generator=rng))) for s in (0.1, 1.0, 10.0)]
    assert 0 < losses[0] < losses[1] < losses[2], losses


def test_gradients_reach_the_projection_and_the_students_features_not_the_teacher() -> None:
    torch.manual_seed(0)
    kd = SemanticGraphKD(16, 8, GRID, tau=0.2)
    feats = _features().requires_grad_(True)
    teacher = torch.rand(3, NUM_CLASSES, *GRID, requires_grad=True)
    kd(feats, teacher).backward()
    assert kd.proj.weight.grad is not None and float(kd.proj.weight.grad.abs().sum()) > 0
    assert feats.grad is not None and float(feats.grad.abs().sum()) > 0
    assert teacher.grad is None


def test_graphs_are_within_each_image() -> None:
    """Image 0's loss does not depend on image 1's nodes."""
    teacher = torch.rand(2, 5, *GRID)
    student = torch.rand(2, 5, *GRID)
    g_s, g_t = affinity_graph(student), affinity_graph(teacher)
    assert g_s.shape == (2, 32, 32)
    other = teacher.clone()
    other[1] = torch.rand(5, *GRID)
    assert float(graph_kl(g_s[:1], g_t[:1], 0.2)) == pytest.approx(float(graph_kl(g_s[:1], affinity_graph(other)[:1],
                                                                                   0.2)))
    assert region_nodes(torch.rand(2, 5, 12, 20), GRID).shape == (2, 5, *GRID)


def test_the_objective_adds_the_term_and_refuses_it_without_teacher_nodes() -> None:
    from fsmde_core.models.student import StudentOutput

    torch.manual_seed(0)
    out = StudentOutput(depth=torch.full((3, 1, 16, 16), 5.0), logits=torch.zeros(3, 4, 4, 4),
                        centres=torch.tensor([[1.0, 2.0, 4.0, 8.0]]).repeat(3, 1), features=_features())
    gt = torch.full((3, 1, 16, 16), 5.0)
    cfg = DistillLossConfig(use_ckd=False, use_vrkd=False, use_semgraph=True, w_semgraph=2.0)
    with pytest.raises(ValueError, match="use_semgraph is enabled but no semantic teacher nodes"):
        compute_losses(out, gt, cfg=cfg, readout="log")
    from fsmde_core.distill.objective import SemanticGraphInput

    kd = SemanticGraphKD(16, 8, GRID, 0.2)
    terms = compute_losses(out, gt, cfg=cfg, readout="log",
                           semgraph=SemanticGraphInput(kd, torch.rand(3, NUM_CLASSES, *GRID)))
    assert float(terms["semgraph"]) > 0
    rest = terms["silog"] * cfg.w_silog + terms["bins"] * cfg.w_bins
    assert float(terms["total"]) == pytest.approx(float(rest + 2.0 * terms["semgraph"]), rel=1e-5)


def test_bad_loss_keys_are_refused_naming_them() -> None:
    with pytest.raises(ConfigError, match="semgraph_grid must be two positive ints"):
        load_config(None, ["loss.semgraph_grid=[1, 1]"])
    with pytest.raises(ConfigError, match="tau_semgraph must be > 0"):
        load_config(None, ["loss.tau_semgraph=0"])
    with pytest.raises(ConfigError, match=r"semantic\.kind must be one of synthetic, segformer"):
        load_config(None, ["semantic.kind=sam"])


# ------------------------------------------------------- synthetic teacher
def _labels() -> np.ndarray:
    """Two 48x64 label maps: sky above, road below, a car in the middle, a VOID corner."""
    lab = np.full((2, 48, 64), ROAD, dtype=np.uint8)
    lab[:, :20] = SKY
    lab[:, 24:40, 20:44] = VEHICLE
    lab[1, :8, :8] = VOID
    return lab


def test_the_exact_synthetic_teacher_gives_class_histograms() -> None:
    nodes = SyntheticSemanticTeacher(quality=1.0).nodes(_labels(), 0, GRID)
    assert nodes.shape == (2, NUM_CLASSES, *GRID)
    assert torch.allclose(nodes[0].sum(0), torch.ones(GRID))  # no VOID in image 0
    assert float(nodes[0, SKY, 0, 0]) == 1.0 and float(nodes[0, ROAD, -1, 0]) == 1.0
    assert float(nodes[1].sum(0)[0, 0]) < 1.0  # VOID counts for no class


def test_the_synthetic_teacher_is_deterministic_and_degrades_with_quality() -> None:
    labels = _labels()
    exact = affinity_graph(SyntheticSemanticTeacher(quality=1.0).nodes(labels, 0, GRID))
    a = SyntheticSemanticTeacher(quality=0.5, seed=3).nodes(labels, 7, GRID)
    assert torch.equal(a, SyntheticSemanticTeacher(quality=0.5, seed=3).nodes(labels, 7, GRID))
    assert not torch.equal(a, SyntheticSemanticTeacher(quality=0.5, seed=3).nodes(labels, 8, GRID))
    errors = [float((affinity_graph(SyntheticSemanticTeacher(quality=q, seed=3).nodes(labels, 7, GRID)) - exact)
                    .abs().mean()) for q in (1.0, 0.7, 0.2)]
    assert errors[0] == 0.0 and errors[0] < errors[1] < errors[2], errors


# ------------------------------------------------------- segformer teacher
@pytest.fixture(scope="module")
def tiny_segformer(tmp_path_factory) -> Path:
    """A randomly initialised 4-stage Segformer, a few kB, saved as a model directory (no download)."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    cfg = SegformerConfig(num_channels=3, num_encoder_blocks=4, depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 24, 32],
                          num_attention_heads=[1, 1, 2, 2], sr_ratios=[8, 4, 2, 1], decoder_hidden_size=16,
                          num_labels=NUM_CLASSES)
    out = tmp_path_factory.mktemp("segformer") / "tiny"
    SegformerForSemanticSegmentation(cfg).save_pretrained(out)
    return out


def test_the_segformer_teacher_pools_its_last_hidden_features(tiny_segformer: Path) -> None:
    teacher = SegformerSemanticTeacher(str(tiny_segformer), device="cpu")
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    nodes = teacher.nodes(images, GRID)
    assert nodes.shape == (2, 32, *GRID) and torch.isfinite(nodes).all()
    assert torch.equal(nodes, teacher.nodes(images, GRID))
    assert not torch.allclose(nodes[0], teacher.nodes(images.flip(-1), GRID)[0])
    assert teacher.identity.startswith("segformer:") and teacher.identity == SegformerSemanticTeacher(
        str(tiny_segformer), device="cpu").identity


def test_a_missing_segmentation_model_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SemanticTeacherError, match=r"semantic.model: .*no config.json"):
        SegformerSemanticTeacher(str(tmp_path), device="cpu")
    with pytest.raises(SemanticTeacherError, match=r"semantic.model: .* is not a model directory"):
        SegformerSemanticTeacher(str(tmp_path / "nope"), device="cpu")


# ---------------------------------------------------------------- training
def test_training_with_semantic_graph_kd_trains_the_adapter_checkpoints_it_and_resumes(synthetic_bag, tmp_path,
                                                                                       ) -> None:
    cfg = tiny_config(synthetic_bag, tmp_path / "cache", "loss.use_semgraph=true", "semantic.quality=0.7",
                      "loss.semgraph_grid=[2, 4]", "loss.semgraph_dim=16")
    ref, resumed, trainer = train_stop_resume(cfg, tmp_path)
    assert max_weight_difference(ref, resumed) < 1e-5
    # the adapter is in the training checkpoint, trained, and restored on resume; not in the deliverable
    latest = json.loads((resumed / "checkpoints" / "latest.json").read_text())
    state = load_file(resumed / "checkpoints" / f"{latest['file']}.safetensors")
    assert "model.owned.semgraph.proj.weight" in state and "model.student.bin_head.mlp.0.weight" in state
    ref_state = load_file(ref / "checkpoints" / f"{latest['file']}.safetensors")
    assert torch.allclose(state["model.owned.semgraph.proj.weight"], ref_state["model.owned.semgraph.proj.weight"],
                          atol=1e-5)
    with torch.random.fork_rng():
        torch.manual_seed(cfg["seed"] + 1)
        init = SemanticGraphKD(trainer.model.feature_channels, 16, (2, 4), 0.2).proj.weight
    assert not torch.allclose(state["model.owned.semgraph.proj.weight"], init)
    assert not any("semgraph" in k for k in load_file(resumed / "student.safetensors"))
    # the semantic nodes were cached once (one store, one entry per sample) and the loss read them
    stores = list((tmp_path / "cache" / "semantic").iterdir())
    assert len(stores) == 1 and len(list(stores[0].glob("*.safetensors"))) == len(trainer.dataset)
    nodes = trainer.semantic_store.get(0)["nodes"]
    assert nodes.shape == (6, NUM_CLASSES, 2, 4)


def test_semantic_graph_kd_on_a_bag_without_labels_names_the_bag_and_the_alternative(tmp_path) -> None:
    bag = write_bag(tmp_path / "real", BagSpec(width=64, height=48, n_frames=2)).path
    cfg = tiny_config(bag, tmp_path / "cache", "loss.use_semgraph=true", "loss.use_ckd=false", "loss.use_vrkd=false",
                      "loss.use_dense_kd=false")
    with pytest.raises(SemanticTeacherError, match=rf"bag {bag} has no label topics.*semantic.kind segformer"):
        Trainer(cfg, tmp_path / "run", progress=False, device_name="cpu").run()


def test_training_with_a_segformer_semantic_teacher(tiny_segformer: Path, tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "real", BagSpec(width=64, height=48, n_frames=2, with_gt=True)).path
    cfg = tiny_config(bag, tmp_path / "cache", "loss.use_semgraph=true", "semantic.kind=segformer",
                      f"semantic.model={tiny_segformer}", "semantic.device=cpu", "optim.max_steps=2")
    trainer = Trainer(cfg, tmp_path / "run", progress=False, device_name="cpu")
    trainer.run()
    assert (tmp_path / "run" / "student.safetensors").is_file()
    assert trainer.semantic_store.get(0)["nodes"].shape == (6, 32, 4, 8)


def test_ddp_keeps_the_adapter_in_sync_across_ranks(synthetic_bag, tmp_path) -> None:
    """Two gloo ranks see different samples; the adapter's gradients are averaged, so replicas stay equal."""
    from robust_training import FAST, TINY

    env = {**os.environ, "FSMDE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(30500 + os.getpid() % 1000), "-m", "fsmde_core.train", "--config", str(TINY), "--bag",
           str(synthetic_bag), "--out", str(tmp_path / "ddp"), "--no-progress", *FAST, "optim.max_steps=2",
           "loss.use_semgraph=true", "loss.semgraph_grid=[2, 4]"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ddp: 2 ranks, parameters in sync" in res.stderr
