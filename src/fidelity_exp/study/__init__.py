"""Study specs, their human data, and the pilot/evaluation split."""

from fidelity_exp.study.data import Study, canonical_frame, load_study, numeric_frame, subgroup_levels
from fidelity_exp.study.loading import load_spec_file, spec_from_config, study_from_file
from fidelity_exp.study.spec import StudySpec, parse_spec
from fidelity_exp.study.split import Split, SplitSettings, draw_split

__all__ = [
    "Split", "SplitSettings", "Study", "StudySpec", "canonical_frame", "draw_split", "load_spec_file", "load_study",
    "numeric_frame", "parse_spec", "spec_from_config", "study_from_file", "subgroup_levels",
]
