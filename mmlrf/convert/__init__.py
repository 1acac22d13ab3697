"""Checkpoint converters and parity checks against official implementations."""
from .parity import ParityResult, check_fixture, load_fixture, record_spike_levels
from .sdtv3 import (DEFAULT_IMAGENET_LAYER_SCALE, ConversionReport, SDTV3Segmentor,
                    convert_checkpoint, convert_official_state_dict, infer_official_config,
                    load_official_checkpoint, mmlrf_config_from_official)

__all__ = ['ParityResult', 'check_fixture', 'load_fixture', 'record_spike_levels',
           'DEFAULT_IMAGENET_LAYER_SCALE', 'ConversionReport', 'SDTV3Segmentor',
           'convert_checkpoint', 'convert_official_state_dict', 'infer_official_config',
           'load_official_checkpoint', 'mmlrf_config_from_official']
