"""Attention ablation grid: every variant x seed of a config trained here (CPU), evaluated
(mIoU), measured (energy, locality) and tabulated per variant as mean ± std over the seeds.

    python tools/analysis/ablation.py CONFIG --variants sdsa lrf_dyn --seeds 0 1 2 \\
        --iters 300 --out work_dirs/ablation/toy

Each run: the config with its model.backbone.attn replaced by the variant's, randomness.seed
the seed, the schedule compressed to --iters steps (scheduler boundaries scaled), one evaluation
and checkpoint at the end, in OUT/runs/<variant>/seed<s>/. A run is finished once its
result.json exists with the grid's settings: rerunning the command skips finished runs and
redoes unfinished ones. Writes OUT/ablation.json (every run), OUT/ablation.md (the table) and
OUT/ablation.png (mIoU per variant, training loss), updated after every run.
"""
import argparse

import mmlrf  # noqa: F401  (first: registries and the mmcv-lite compatibility layer)
from mmengine.config import DictAction

from mmlrf.analysis import ablation
from mmlrf.analysis.report import command_line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    variants = '\n'.join(f'  {k:<16} {v}' for k, v in ablation.VARIANTS.items())
    p = argparse.ArgumentParser(description=__doc__, epilog=f'variants:\n{variants}',
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', help='segmentation config with an SDT-V3 backbone')
    p.add_argument('--variants', nargs='+', choices=list(ablation.VARIANTS), metavar='VARIANT',
                   default=list(ablation.VARIANTS), help='attention variants (default: all)')
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2], help='seeds of each')
    p.add_argument('--iters', type=int, required=True, help='training steps of every run')
    p.add_argument('--out', required=True, help='grid folder (resumed if it exists)')
    p.add_argument('--num-images', type=int, default=8, help='validation images for energy')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, help='config overrides')
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    command = command_line('ablation.py', argv)
    report = ablation.run_grid(args.config, args.variants, args.seeds, args.iters, args.out,
                               args.cfg_options, args.num_images, command=command)
    print(ablation.format_markdown(report) + f'wrote {args.out}/ablation.{{json,md,png}}')
    return report


if __name__ == '__main__':
    main()
