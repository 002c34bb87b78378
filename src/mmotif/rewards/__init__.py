"""Per-skill reward models: network, preference store, trainer, statistics, RL transform, versions.

Modules (import them directly; this package imports nothing so light processes such as the
annotators can use `mmotif.rewards.store` without loading torch):

- `model`:     `RewardModel` (§4.2, over `mmotif.models.message.MessageEncoder`) and
               `encode_captions` (the input encoding is `mmotif.contract.encode_reward_input`)
- `store`:     `PreferenceStore`, the durable append-only SQLite label store
- `training`:  Bradley-Terry loss with ties, `train_reward_model`,
               `fit_skill_reward` (§4.3-4.4)
- `stats`:     normalisation over unique inputs, per-skill thresholds, quantile table (§4.5)
- `transform`: `intrinsic_reward`, the RL-time transform (§4.6)
- `versions`:  `RewardModelSet`, `publish`, `load`: immutable numbered versions
"""
