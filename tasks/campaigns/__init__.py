"""Precision marketing (issue #18): which customer gets which offer, judged from logged campaigns.

Built so far, bottom up: the campaign-log contracts (:mod:`tasks.campaigns.contracts`, the exposures
gate in :mod:`tasks.campaigns.validation`), a campaign simulator with ground truth
(:mod:`tasks.campaigns.simulator`) and off-policy estimators (:mod:`tasks.campaigns.ope`).
docs/campaigns.md says what each does and what is not built yet.
"""
