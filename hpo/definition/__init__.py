"""What a study is: its file (`study_file`: tables, checks, the parsed spec stored on the study), its search
space and THE mapping (search space, trial) -> TrainConfig (`space`), and where relative paths point (`paths`)."""
