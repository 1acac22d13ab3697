# Flagship: the paper's Table 2 experiment. SDT-V3-19M with LRF-Dyn attention (Q, K and V of
# the official attention kept, PMSN dendritic dynamics on K*V read out through Q, local receptive
# field) + spiking FPN on ADE20K 512x512: AdamW 1e-3, wd 5e-3, head lr x2, 1.5k warm-up + poly,
# 160k iterations, 8 GPUs x 2 = batch 16, from the converted official ImageNet checkpoint
# checkpoints/sdtv3-19m_in1k.pth (tools/convert_sdtv3.py; env MMLRF_PRETRAINED or
# --cfg-options model.backbone.init_cfg.checkpoint=PATH).
_base_ = ['./sdtv3/fpn_sdtv3-19m-lrfdyn_8xb2-160k_ade20k-512x512.py']
