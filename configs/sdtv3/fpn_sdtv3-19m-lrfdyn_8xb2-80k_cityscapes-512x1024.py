# SDT-V3-19M with LRF-Dyn attention (see fpn_sdtv3-19m-lrfdyn_8xb2-160k_ade20k-512x512.py) +
# spiking FPN on Cityscapes: the 19M SDSA Cityscapes config with the attention replaced. Starts
# from the converted official ImageNet checkpoint of SDT-V3-19M.
_base_ = ['./fpn_sdtv3-19m-sdsa_8xb2-80k_cityscapes-512x1024.py']
model = dict(
    backbone=dict(attn=dict(_delete_=True, type='LRFDyn', num_dendrites=8, dilations=(3, 5))))
