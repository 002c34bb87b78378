"""Evaluation: one episode loop over a VectorSkillEnv for zero-shot task evaluation and
episode replays, the results and their charts, and the run report. Plain Python (no Ray)."""
