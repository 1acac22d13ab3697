# Flagship: SDT-V3-19M + LRF-Dyn + spiking FPN on ADE20K 512x512, the paper's protocol
# (AdamW 1e-3, wd 5e-3, head lr x2, 1.5k warm-up + poly, 160k iterations, 8 GPUs x 2 = batch 16,
# ImageNet-pretrained backbone from env MMLRF_PRETRAINED or
# --cfg-options model.backbone.init_cfg.checkpoint=PATH).
_base_ = ['./sdtv3/fpn_sdtv3-19m-lrfdyn_8xb2-160k_ade20k-512x512.py']
