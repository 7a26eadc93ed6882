"""Each experiment of the paper is one YAML file here: its axes at three scales, figures and claims."""
