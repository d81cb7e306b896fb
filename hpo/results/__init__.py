"""What a study produced: the records the CLI prints (`records`), what a run achieved and saved (`summary`,
`efficiency`), crash checks (`consistency`), the retrain of a trial and its records (`retrain`,
`retrain_records`), its curves (`plots`) and deployable exports (`export`)."""
