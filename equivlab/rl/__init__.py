"""Reinforcement learning: TD errors, tabular and linear Q-learning, DQN."""
