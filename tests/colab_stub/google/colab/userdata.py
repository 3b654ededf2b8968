"""``userdata.get``: the notebook's secrets, from the JSON in ``MUFFIN_COLAB_SECRETS``."""

import json
import os


class SecretNotFoundError(Exception):
    pass


def get(key: str) -> str:
    secrets = json.loads(os.environ.get("MUFFIN_COLAB_SECRETS", "{}"))
    if key not in secrets:
        raise SecretNotFoundError(key)
    return secrets[key]
