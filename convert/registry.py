"""Which converter serves which `--model`. Each takes (src, out_dir, **options) and returns the config."""
from convert.wan_dit import convert_dit

CONVERTERS = {"dit": convert_dit}
