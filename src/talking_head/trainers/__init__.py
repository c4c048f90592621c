"""The trainers' logic, importable from the installed package (the scripts in `train/` are thin wrappers).

    talking_head.trainers.landmarks.main(argv)   # = python train/train_landmarks.py ARGS
    talking_head.trainers.diffusion.main(argv)   # = python train/train_diffusion.py ARGS
    python -m talking_head.trainers.diffusion ARGS   # the same without the checkout

`budget`: the wall-clock budget (`--max_train_minutes`) and clean stops (a signal -> checkpoint ->
`TrainingStopped`) of the shared training loop. `train_emotion.py` still keeps its logic in the script.
"""
