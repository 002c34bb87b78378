"""The networks: the skill policy and the message encoder it shares with the reward model.

- `message`: `MessageEncoder`, the char-CNN over the NLE message buffer (spec §4.2), used by
  the policy (`network.SkillPolicyNet`) and the reward model (`mmotif.rewards.model`);
- `layers`: orthogonal initialisation and parameter counts, shared by both networks;
- `network`: `SkillPolicyNet` (spec §7), its size presets, the recurrent-state convention
  (`mask_state`) and the exact encoding shortcuts (`encode_distinct`, `EncodingCache`);
- `build`: `make_network`, the policy built from a run config;
- `device`: `resolve_device`, the learner's and reward trainer's device, with a CUDA diagnosis.
"""
