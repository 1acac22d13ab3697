# Spikformer-8-512 with LRF-Dyn attention + spiking FPN, ADE20K 512x512, 8x2 = batch 16, 160k
# iterations. Pretrained: an ImageNet LRF-Dyn backbone (env MMLRF_PRETRAINED).
_base_ = ['./fpn_spikformer-8-512-ssa_8xb2-160k_ade20k-512x512.py']
model = dict(
    backbone=dict(
        attn=dict(_delete_=True, type='LRFDyn', num_dendrites=8, dilations=(3, 5)),
        init_cfg=dict(
            checkpoint='{{$MMLRF_PRETRAINED:checkpoints/spikformer-8-512-lrfdyn_in1k.pth}}')))
