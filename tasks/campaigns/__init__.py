"""Precision marketing (issue #18): which customer gets which offer, judged from logged campaigns.

Built so far, bottom up: the campaign-log contracts (:mod:`tasks.campaigns.contracts`, the exposures
gate in :mod:`tasks.campaigns.validation`), a campaign simulator with ground truth
(:mod:`tasks.campaigns.simulator`), off-policy estimators (:mod:`tasks.campaigns.ope`), reward models
(:mod:`tasks.campaigns.reward`), a non-private exploring offer policy (:mod:`tasks.campaigns.policy`)
the estimators' check against the simulator's truth (:mod:`tasks.campaigns.study`), the user-level
DP-SGD reward model (:mod:`tasks.campaigns.dp_reward`), the DP release of estimates
(:mod:`tasks.campaigns.release`) and the ``train_offer_policy`` DAG's stages and gate
(:mod:`tasks.campaigns.pipeline`).
docs/campaigns.md says what each does and what is not built yet.
"""
