"""The built-in RT-DETR models: parameter counts to the digit, GFLOPs within 3% of the references,
forward shapes in eval and train mode (square and non-square), fusion."""

import pytest
import torch

from rtdet import build_model

# ../shared/reference/targets.md (Ultralytics 8.4, nc=80)
REFERENCE = {
    "rtdetr-l.yaml": (32_970_476, 110.2),
    "rtdetr-x.yaml": (67_467_852, 234.9),
    "rtdetr-resnet50.yaml": (42_925_132, 132.7),
    "rtdetr-resnet101.yaml": (61_917_260, 193.7),
}


@pytest.fixture(scope="module")
def rtdetr_l():
    torch.manual_seed(0)
    return build_model("rtdetr-l.yaml")


@pytest.mark.parametrize("name", list(REFERENCE))
def test_parameter_count_and_gflops_match_the_reference(name):
    params, gflops = REFERENCE[name]
    model = build_model(name)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.flops(640) == pytest.approx(gflops, rel=0.03)


def test_decoder_alone_matches_reference_count(rtdetr_l):
    assert sum(p.numel() for p in rtdetr_l.head.parameters()) == 7_466_252


def test_nc_changes_only_the_class_layers():
    base = sum(p.numel() for p in build_model("rtdetr-l.yaml").parameters())
    # per class: denoising embedding (256) + encoder score head (257) + 6 decoder score heads (6 * 257)
    assert sum(p.numel() for p in build_model("rtdetr-l.yaml", nc=1).parameters()) == base - 79 * (256 + 7 * 257)


@pytest.mark.parametrize("shape", [(640, 640), (480, 640)])
def test_eval_output_is_top300_boxes_scores_classes(rtdetr_l, shape):
    rtdetr_l.eval()
    with torch.no_grad():
        y = rtdetr_l(torch.rand(2, 3, *shape))
    assert y.shape == (2, 300, 6)
    boxes, scores, labels = y[..., :4], y[..., 4], y[..., 5]
    assert boxes.min() >= 0 and boxes.max() <= 1
    assert torch.all(scores[:, :-1] >= scores[:, 1:])  # sorted by score
    assert torch.all((labels >= 0) & (labels < 80) & (labels == labels.round()))


@pytest.mark.parametrize("shape", [(640, 640), (480, 640)])
def test_train_output_with_denoising_targets(rtdetr_l, shape):
    rtdetr_l.train()
    targets = {
        "batch_idx": torch.tensor([0, 0, 1]),
        "cls": torch.tensor([3, 7, 1]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.1, 0.1], [0.7, 0.2, 0.4, 0.2]]),
    }
    with torch.no_grad():
        dec_bboxes, dec_scores, enc_bboxes, enc_scores, dn_meta = rtdetr_l(torch.rand(2, 3, *shape), targets)
    num_dn = dn_meta["dn_num_split"][0]
    assert dn_meta["dn_num_split"][1] == 300
    assert dec_bboxes.shape == (6, 2, num_dn + 300, 4) and dec_scores.shape == (6, 2, num_dn + 300, 80)
    assert enc_bboxes.shape == (2, 300, 4) and enc_scores.shape == (2, 300, 80)
    assert dn_meta["dn_num_group"] == 100 // 2  # 2 = most boxes in one image


def test_fused_model_gives_the_same_features_and_scores(rtdetr_l):
    model = build_model("rtdetr-l.yaml").eval()
    model.load_state_dict(rtdetr_l.state_dict())
    x = torch.rand(1, 3, 320, 320)
    with torch.no_grad():
        feats, y = model.head_inputs(x), model(x)
        model.fuse()
        fused_feats, fused_y = model.head_inputs(x), model(x)
    for a, b in zip(fused_feats, feats):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
    torch.testing.assert_close(fused_y[..., 4], y[..., 4], rtol=1e-4, atol=1e-4)  # sorted scores
