"""What transfer has to beat: the recipe's target head on raw pixels and on the untrained network's features.

If transferred features do not beat both, the source taught the network nothing the target uses, and
influences of source classes measure noise.
"""

from __future__ import annotations

import torch

from dmtoolkit.train.fit import margins_from_logits
from dmtoolkit.train.job import RunContext
from dmtoolkit.train.models import build_model
from dmtoolkit.train.transfer import fit_head, transfer_fixed_feature


def transfer_baselines(context: RunContext, models: int = 4) -> dict[str, float]:
    """Target accuracy of the recipe's fixed-feature head on raw pixels, and on `models` untrained networks (mean)."""
    recipe, spec = context.recipe, context.recipe.transfer
    raw_train = context.target_train_x.flatten(1)[None]
    raw_test = context.target_test_x.flatten(1)[None]
    weight, bias, mean, std = fit_head(raw_train, context.target_train_y, context.num_target_classes, spec, [0])
    raw = margins_from_logits(torch.baddbmm(bias, (raw_test - mean) / std, weight), context.target_test_y)
    seeds = list(range(1000, 1000 + models))
    model = build_model(recipe.model.arch, models, context.channels, context.num_source_classes,
                        recipe.model.resolution, recipe.model.width, recipe.model.hidden, recipe.model.downsample,
                        recipe.model.norm)
    model.init_from_seeds(seeds)
    logits = transfer_fixed_feature(model, context.target_train_x, context.target_train_y, context.target_test_x,
                                    context.num_target_classes, spec, seeds)
    untrained = margins_from_logits(logits, context.target_test_y)
    return {"raw pixels": float((raw > 0).float().mean()), "untrained network": float((untrained > 0).float().mean())}
