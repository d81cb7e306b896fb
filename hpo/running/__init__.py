"""Running a study: create or resume it (`study`), the objective of one trial (`objective`), worker loops on
this machine (`worker`, `launcher`, `packing`) or on Ray (`ray_workers`), per-trial checkpoints
(`checkpoints`) and the notes optuna-dashboard shows (`notes`)."""
