"""Names of the records and metrics that travel between the coordinator and sites."""

ARRAYS = "arrays"  # ArrayRecord: model weights
CONFIG = "config"  # ConfigRecord: TrainSettings of the round
METRICS = "metrics"  # MetricRecord: numbers the site reports
SITE = "site"  # ConfigRecord: the site's public name

SITE_NAME = "name"
NUM_EXAMPLES = "num-examples"  # the weight of a site's update and metrics

TRAIN_LOSS = "train-loss"
TRAIN_SECONDS = "train-seconds"
TRAIN_STEPS = "train-steps"
EVAL_LOSS = "eval-loss"
EVAL_AUC = "eval-auc"
EVAL_SENSITIVITY = "eval-sensitivity"
EVAL_SPECIFICITY = "eval-specificity"
