"""Entry point for the `feast` CLI (`cd feature_repo && feast apply`): the same
objects the pipeline applies, for the profile in the environment (`MSMT_*`)."""

from feature_repo.definitions import definitions
from msmt.settings import Settings

(
    user,
    item,
    scenario,
    user_stats_fv,
    item_stats_fv,
    user_scenario_stats_fv,
    item_scenario_stats_fv,
    ranker_v1,
) = definitions(Settings.from_env())
