"""Which converter serves which `--model`. Each takes (src, out_dir, **options) and returns the config."""
from convert.umt5 import convert_umt5
from convert.wan_dit import convert_dit
from convert.wan_vae import convert_vae

CONVERTERS = {"dit": convert_dit, "t5": convert_umt5, "vae": convert_vae}
