"""Reinforcement learning: TD errors, tabular and linear Q-learning, DQN.

Modules: `value_learning` (TD errors and losses), `tabular`, `linear`,
`envs` (the chain MDP, probes, gymnax), `replay`, `noise`, `schedules`,
`evaluation`, `keys` (PRNG keys as jax users pass them), `validation`
(index, probability and step-size checks) and `dqn/` (config, parts, loop,
metrics, runner, driver).
"""
