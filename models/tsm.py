"""TSM: Temporal Shift Module (Lin, Gan, Han, ICCV 2019; github.com/mit-han-lab/temporal-shift-module).

Registered variants (networks in `_tsm_nets`, backbones in `_tsm_backbones`, the shift in `_tsm_shift`):

* ``tsm_mobilenetv2`` / ``tsm_resnet50``: offline TSN + bi-directional shift (1/8 channels each way, "blockres"),
  8 segments, average consensus, Kinetics-400. Checkpoints: the released ``TSM_kinetics_RGB_<arch>_shift8_blockres_
  avg_segment8_e100_dense.pth`` (``{"state_dict": {"module." + key}}``; ``base_model.classifier.*`` is renamed to
  ``new_fc.*`` as the authors' test_models.py does).
* ``tsm_mobilenetv2_online``: the online demo's MobileNetV2 (uni-directional shift, Jester 27 gestures) with its 10
  shift buffers as state ``shift_0..shift_9``. Checkpoint: ``mobilenetv2_jester_online.pth.tar`` (plain state_dict).
* ``tsm_resnet50_online``: the same state lifting on the TSM ResNet-50 (16 buffers), Kinetics-400 head, keys and
  checkpoint layout of ``tsm_resnet50``. The authors released no online ResNet-50: an offline checkpoint loads, but
  it was trained with the bi-directional shift, so its accuracy online is not the authors' figure.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from ._registry import IMAGENET_MEAN, IMAGENET_STD, ModelEntry, Preprocess, register
from ._tsm_nets import TSN, OnlineMobileNetV2, OnlineTSN, tsn_checkpoint_filter

ORIGIN = "mit-han-lab/temporal-shift-module@1f6a834"
_RESIZE = "shorter side to 256, then center crop 224 (GroupScale(256), GroupCenterCrop(224))"
OFFLINE_PRE = Preprocess(size=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=_RESIZE, resize_shorter=256)
ONLINE_PRE = Preprocess(size=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=_RESIZE, resize_shorter=256,
                        frame_stride=2)


def _kinetics_tsn(name: str, build: Callable[..., nn.Module], *, streaming: bool, description: str) -> ModelEntry:
    """A TSN-layout Kinetics-400 variant (8 segments, 224, released checkpoint layout of the offline models)."""
    return ModelEntry(name=name, family="tsm", build=build, num_classes=400, labels="kinetics400.txt",
                      dataset="Kinetics-400", num_frames=8, input_size=224, streaming=streaming,
                      preprocess=OFFLINE_PRE, origin=ORIGIN, checkpoint_filter=tsn_checkpoint_filter,
                      description=description)


register(_kinetics_tsn("tsm_mobilenetv2", partial(TSN, backbone="mobilenetv2"), streaming=False,
                       description="TSM MobileNetV2, bi-directional shift, 8 segments (ops/models.py TSN)"))
register(_kinetics_tsn("tsm_resnet50", partial(TSN, backbone="resnet50"), streaming=False,
                       description="TSM ResNet-50, bi-directional shift, 8 segments (ops/models.py TSN)"))
register(_kinetics_tsn("tsm_resnet50_online", partial(OnlineTSN, backbone="resnet50"), streaming=True,
                       description="TSM ResNet-50 run online: uni-directional shift, 16 shift buffers as state; "
                                   "loads the offline tsm_resnet50 checkpoint (trained bi-directional, so not an "
                                   "authors' online model)"))
register(ModelEntry(
    name="tsm_mobilenetv2_online", family="tsm", build=OnlineMobileNetV2, num_classes=27, labels="jester27.txt",
    dataset="Jester", num_frames=8, input_size=224, streaming=True, preprocess=ONLINE_PRE, origin=ORIGIN,
    description="online TSM MobileNetV2 (online_demo), uni-directional shift, 10 shift buffers as state; "
                "the demo feeds every other camera frame"))
