# SDT-V3-5M with LRF-SSA attention (QK-first SSA + dilated depth-wise LRF branch on V,
# dilations (3, 5)) + spiking FPN, ADE20K 512x512, 8x2 = batch 16, 160k iterations.
# Pretrained: an ImageNet LRF-SSA backbone (env MMLRF_PRETRAINED).
_base_ = ['./fpn_sdtv3-5m-sdsa_8xb2-160k_ade20k-512x512.py']
model = dict(
    backbone=dict(
        attn=dict(_delete_=True, type='LRFSSA', order='qk', dilations=(3, 5)),
        init_cfg=dict(checkpoint='{{$MMLRF_PRETRAINED:checkpoints/sdtv3-5m-lrfssa_in1k.pth}}')))
