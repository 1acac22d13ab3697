# SDT-V3-5M with LRF-SSA attention (the official QK-first SSA plus dilated 3x3 depth-wise
# convolutions on V, dilations 3, 5) + spiking FPN, ADE20K 512x512, 8x2 = batch 16, 160k
# iterations. It starts from the converted official ImageNet checkpoint of SDT-V3-5M (as
# the SDSA config); the local branch is new and keeps its initialisation.
_base_ = ['./fpn_sdtv3-5m-sdsa_8xb2-160k_ade20k-512x512.py']
model = dict(
    backbone=dict(attn=dict(_delete_=True, type='LRFSSA', order='qk', dilations=(3, 5))))
