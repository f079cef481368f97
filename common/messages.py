"""Names of the records and metrics that travel between the coordinator and sites."""

ARRAYS = "arrays"  # ArrayRecord: model weights
CONFIG = "config"  # ConfigRecord: TrainSettings of the round
METRICS = "metrics"  # MetricRecord: numbers the site reports
SITE = "site"  # ConfigRecord: the site's public name
PRIVACY = "privacy"  # ConfigRecord: the site's mechanism this round and its cumulative epsilon

SITE_NAME = "name"
ARRAY_KEYS = "array-keys"  # under SecAgg+: JSON list naming the legacy FitIns arrays in order
NUM_EXAMPLES = "num-examples"  # the weight of a site's update and metrics

TRAIN_LOSS = "train-loss"
TRAIN_SECONDS = "train-seconds"
TRAIN_STEPS = "train-steps"
EVAL_SECONDS = "eval-seconds"
EVAL_LOSS = "eval-loss"
EVAL_AUC = "eval-auc"
EVAL_SENSITIVITY = "eval-sensitivity"
EVAL_SPECIFICITY = "eval-specificity"

# A site's failure travels as an error reply whose reason is this JSON object, so that the
# coordinator can name the site and the kind of failure (never patient data).
SITE_ERROR_CODE = 2  # Flower's ErrorCode.CLIENT_APP_RAISED_EXCEPTION


def site_error_reason(site: str, kind: str, message: str) -> str:
    import json

    return json.dumps({"fedrad-site-error": 1, "site": site, "kind": kind, "message": message})


def parse_site_error(reason: str) -> dict[str, str] | None:
    """The fields of a reason made by `site_error_reason`, or None for any other reason."""
    import json

    try:
        fields = json.loads(reason)
    except (TypeError, ValueError):
        return None
    return fields if isinstance(fields, dict) and fields.get("fedrad-site-error") == 1 else None
