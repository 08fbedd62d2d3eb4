#!/usr/bin/env bash
# Fetch the photographs ctsr-lite is trained and evaluated on (never committed to git).
#   scripts/fetch_photos.sh [DEST]   (default: data/photos)
# Debian wallpaper packages (GPL-2+), photographs only (no drawings or flat colours), plus the
# CC0 colour photographs of scikit-image. Licences are recorded in DEST/LICENCES.txt.
set -euo pipefail
dest=${1:-data/photos}
mkdir -p "$dest/raw"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
( cd "$work" && apt-get download mate-backgrounds plasma-workspace-wallpapers >/dev/null )
for deb in "$work"/*.deb; do dpkg -x "$deb" "$work/x"; done
# mate-backgrounds: the photographs are the nature/ set
for f in "$work"/x/usr/share/backgrounds/mate/nature/*; do
  [ -f "$f" ] && cp -L "$f" "$dest/raw/mate-$(basename "$f")"
done
# plasma-workspace-wallpapers: the photographic wallpapers, largest rendition of each
for name in BytheWater ColdRipple ColorfulCups DarkestHour EveningGlow FallenLeaf Grey Kite OneStandsOut Path summer_1am; do
  dir="$work/x/usr/share/wallpapers/$name/contents/images"
  [ -d "$dir" ] || continue
  best=$(ls -S "$dir" | head -n 1)
  cp -L "$dir/$best" "$dest/raw/plasma-$name.${best##*.}"
done
cat > "$dest/LICENCES.txt" <<'TXT'
mate-* : Debian package mate-backgrounds, GPL-2+ (see /usr/share/doc/mate-backgrounds/copyright)
plasma-* : Debian package plasma-workspace-wallpapers, GPL-2+ (see its copyright file)
skimage-* : scikit-image sample data (skimage.data), CC0 / public domain per its docstrings
matplotlib-* : matplotlib sample data (grace_hopper.jpg), see matplotlib's LICENSE / sample-data notes
TXT
if python3 -c "import skimage" 2>/dev/null; then
  python3 - "$dest/raw" <<'PY'
import sys
from pathlib import Path
from PIL import Image
import skimage.data as d
out = Path(sys.argv[1])
for name in ("astronaut", "chelsea", "coffee", "rocket"):
    Image.fromarray(getattr(d, name)()).save(out / f"skimage-{name}.png")
left, right, _ = d.stereo_motorcycle()
Image.fromarray(left).save(out / "skimage-motorcycle_left.png")
Image.fromarray(right).save(out / "skimage-motorcycle_right.png")
PY
fi
if python3 -c "import matplotlib" 2>/dev/null; then
  python3 - "$dest/raw" <<'PY'
import sys
from pathlib import Path
from matplotlib.cbook import get_sample_data
from PIL import Image
with get_sample_data("grace_hopper.jpg") as handle:
    Image.open(handle).convert("RGB").save(Path(sys.argv[1]) / "matplotlib-grace_hopper.png")
PY
fi
ls "$dest/raw" | wc -l
