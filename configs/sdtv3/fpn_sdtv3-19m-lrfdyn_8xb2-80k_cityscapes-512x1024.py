# SDT-V3-19M + LRF-Dyn + spiking FPN on Cityscapes (512x1024 crops, 19 classes, 8x2 = batch 16,
# 80k iterations, sliding-window inference). Pretrained: an ImageNet LRF-Dyn backbone.
_base_ = ['./fpn_sdtv3-19m-sdsa_8xb2-80k_cityscapes-512x1024.py']
model = dict(
    backbone=dict(
        attn=dict(_delete_=True, type='LRFDyn', token='v', num_dendrites=8, mode='auto',
                  dilations=(3, 5)),
        init_cfg=dict(checkpoint='{{$MMLRF_PRETRAINED:checkpoints/sdtv3-19m-lrfdyn_in1k.pth}}')))
