"""Data: dataset YAMLs and label validation, transforms and pipelines, loaders, the synthetic demo set."""

from rtdet.data.check import run_check
from rtdet.data.dataset import DetectionDataset, build_dataset, open_split
from rtdet.data.formats import DataConfig, DataConfigError, Problem, load_data_config
from rtdet.data.loader import DetectionDataLoader, build_dataloader, collate, unletterbox
from rtdet.data.pipelines import PipelineSchedule, PipelineSpec, build_pipeline, load_pipeline_spec
from rtdet.data.synthetic import make_synthetic_dataset
from rtdet.data.transforms import TRANSFORMS, Compose, PipelineConfigError, Transform, register_transform

__all__ = [
    "TRANSFORMS",
    "Compose",
    "DataConfig",
    "DataConfigError",
    "DetectionDataLoader",
    "DetectionDataset",
    "PipelineConfigError",
    "PipelineSchedule",
    "PipelineSpec",
    "Problem",
    "Transform",
    "build_dataloader",
    "build_dataset",
    "build_pipeline",
    "collate",
    "load_data_config",
    "load_pipeline_spec",
    "make_synthetic_dataset",
    "open_split",
    "register_transform",
    "run_check",
    "unletterbox",
]
