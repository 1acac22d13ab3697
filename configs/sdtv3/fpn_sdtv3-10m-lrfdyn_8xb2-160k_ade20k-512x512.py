# SDT-V3-10M with LRF-Dyn attention (dendritic dynamics on V, 8 compartments, causal raster
# scan, mode 'auto': Triton on CUDA, chunked scan on CPU; + LRF branch with dilations (3, 5))
# + spiking FPN, ADE20K 512x512, 8x2 = batch 16, 160k iterations. Pretrained: an ImageNet
# LRF-Dyn backbone (MMLRF_PRETRAINED).
_base_ = ['./fpn_sdtv3-10m-sdsa_8xb2-160k_ade20k-512x512.py']
model = dict(
    backbone=dict(
        attn=dict(_delete_=True, type='LRFDyn', token='v', num_dendrites=8, mode='auto',
                  dilations=(3, 5)),
        init_cfg=dict(checkpoint='{{$MMLRF_PRETRAINED:checkpoints/sdtv3-10m-lrfdyn_in1k.pth}}')))
