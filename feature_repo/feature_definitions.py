"""Entry point for the `feast` CLI (`cd feature_repo && feast apply`): the same objects the pipeline
applies, for the profile and data contract in the environment (`MSMT_*`, `MSMT_CONTRACT`).

Feast collects the Feast objects bound to this module's names; the contract decides how many views
there are, so they are bound by name (`user_stats`, `ranker_<contract>_<digest>`, …).
"""

from feature_repo.definitions import definitions
from msmt.settings import Settings

globals().update({obj.name: obj for obj in definitions(Settings.from_env())})
