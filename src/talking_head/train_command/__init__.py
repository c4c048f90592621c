"""`talking-head train`: a pipeline of your own person from videos, in one command, within a time budget.

Modules: checks (the input, refused in one line before any training), stages (prepare, the two trainers,
assemble, evaluate; the recipes and the budget shares), progress (the one status line), command (the
parser, the run's state in OUTPUT/train_command.json, resume and signals).
"""


def add_train_parser(sub):
    from talking_head.train_command.command import add_train_parser as add

    return add(sub)
