# SDT-V3-5M with LRF-Dyn attention + spiking FPN, ADE20K 512x512, 8x2 = batch 16, 160k
# iterations. LRF-Dyn keeps the official attention's Q, K and V projections: the dendritic
# dynamics (PMSN's complex modes, 8 per channel, causal raster scan) run on K*V and are read
# out through Q, plus the local receptive field (dilations 3, 5). It starts from the converted
# official ImageNet checkpoint of SDT-V3-5M (as the SDSA config); the dynamics and the
# local branch are new and keep their initialisation.
_base_ = ['./fpn_sdtv3-5m-sdsa_8xb2-160k_ade20k-512x512.py']
model = dict(
    backbone=dict(attn=dict(_delete_=True, type='LRFDyn', num_dendrites=8, dilations=(3, 5))))
