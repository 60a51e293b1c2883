"""Image files: the byte check that finds bad files before training, and the one decoder every entry point uses.

The folder pipeline, `serve_bytes` in an export, `FeatureIndex` and `keras-transfer predict` all decode with
`decode_image`, so they accept the same formats the same way, and all turn a JPEG by its EXIF orientation (as
phones store photos taken sideways), in TensorFlow ops, so the exported graph does it too.
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import tensorflow as tf

FORMATS = "JPEG, PNG, GIF, BMP or WebP"
# Leading bytes of the formats `tf.io.decode_image` reads; `serve_bytes` refuses anything else in-graph.
SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"RIFF")
# Files whose header declares more pixels are skipped: PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS).
# Set keras_transfer.images.MAX_PIXELS to change it (as PIL users set Image.MAX_IMAGE_PIXELS).
MAX_PIXELS = 89_478_485
MIN_SIDE = 32  # a whole image smaller than this on a side is listed as an image to look at


def image_size(value, name="image_size", *, channels=False, any_size=False):
    """`(height, width)` from an int side or a `(height, width)` pair: the one rule for sizes, used by
    `load_dataset(image_size=...)` and `build_model(input_shape=...)`.

    Args:
        value: the size given.
        name: the argument's name, for the error.
        channels: also accept `(height, width, 3)`.
        any_size: also accept `(None, None)` (a model that runs at any size), returned as is.

    Raises:
        ValueError: naming `name` and `value`, for anything else.
    """
    pair = (value, value) if _is_size(value) else tuple(value) if isinstance(value, (list, tuple)) else ()
    if channels and len(pair) == 3 and pair[2] == 3:
        pair = pair[:2]
    if any_size and pair == (None, None):
        return pair
    if len(pair) != 2 or not all(_is_size(side) for side in pair):
        allowed = "an int or (height, width) of positive ints" + (", or (height, width, 3)" if channels else "")
        unknown = "; (None, None) for any size" if any_size else ""
        raise ValueError(f"{name} must be {allowed}{unknown}; images are RGB. Received: {name}={value!r}")
    return int(pair[0]), int(pair[1])


def _is_size(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def find_images(folder, oddities=None):
    """Readable image files under `folder` (sorted, subfolders included, hidden files and folders ignored),
    and `(path, reason)` for every other file; `oddities`: as `image_problem`'s."""
    found, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(f for f in filenames if not f.startswith(".")):
            path = os.path.join(dirpath, filename)
            reason = image_problem(path, oddities)
            if reason:
                skipped.append((path, reason))
            else:
                found.append(path)
    return found, skipped


def image_files(items):
    """Readable image files among `items` (file paths, or folders searched like `find_images`), in order, and
    `(path, reason)` for the rest."""
    found, skipped = [], []
    for item in map(os.fspath, items):
        if os.path.isdir(item):
            files, bad = find_images(item)
            found += files
            skipped += bad
            continue
        reason = image_problem(item) if os.path.isfile(item) else "no such file"
        (skipped.append((item, reason)) if reason else found.append(item))
    return found, skipped


def image_problem(path, oddities=None):
    """Why the file at `path` cannot be used as an image, or None when it looks whole.

    Recognizes JPEG, PNG, GIF, BMP and WebP by their signature; finds truncation by end markers or declared sizes,
    PNG damage by its chunk checksums, and reads the width and height from the header: above `MAX_PIXELS` the
    file is refused before anything decodes it. With `oddities` (a list), a whole image that is unlikely to be a
    photo of the task (a GIF, or smaller than `MIN_SIDE` pixels on a side: placeholders, icons, tracking pixels)
    is appended as `(path, reason)`; it is kept.
    """
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file (0 bytes)"
        with open(path, "rb") as f:
            head = f.read(16)
            f.seek(max(size - 1024, 0))
            tail = f.read()
            problem = _format_problem(head, tail, size, f) or _size_problem(f, head)
            if not problem and oddities is not None:
                oddity = _oddity(head, f)
                (oddities.append((path, oddity)) if oddity else None)
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    return problem


def _oddity(head, f):
    if head[:4] == b"GIF8":
        return "a GIF: a placeholder or an animation rather than a photo?"
    f.seek(0)
    width, height = image_dimensions(f.read(1 << 16), f)
    if min(width, height) < MIN_SIDE:
        return f"{width}x{height} pixels: too small to be a photo of the task?"
    return None


def _format_problem(head, tail, size, f=None):
    if head.startswith(b"\xff\xd8\xff"):
        return None if b"\xff\xd9" in tail or _jpeg_decodes(f) else "truncated JPEG (no end-of-image marker)"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return None if b"IEND" in tail else "truncated PNG (no IEND chunk)"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return None if b";" in tail[-16:] else "truncated GIF (no trailer)"
    if head.startswith(b"BM") and size >= 26:
        declared = int.from_bytes(head[2:6], "little")
        return None if declared <= size else f"truncated BMP ({size} of {declared} bytes)"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        declared = int.from_bytes(head[4:8], "little") + 8
        return None if declared <= size else f"truncated WebP ({size} of {declared} bytes)"
    return f"not an image (expected {FORMATS})"


def _jpeg_decodes(f):
    """Whether the JPEG in the open file decodes whole: judged by decoding, not by its tail, for a file whose
    last KB holds no end-of-image marker (one followed by padding or other trailing data is whole; one cut short
    is not: TensorFlow's decoder refuses it, as it would in the pipeline)."""
    if f is None:
        return False
    f.seek(0)
    try:
        tf.io.decode_jpeg(f.read(), try_recover_truncated=False)
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError):
        return False
    return True


def _size_problem(f, head):
    """Reads the dimensions (and a PNG's chunk checksums) from the open file; the reason to refuse it, or None."""
    f.seek(0)
    if head.startswith(b"\x89PNG"):
        problem = _png_problem(f.read())
        if problem:
            return problem
        f.seek(0)
    dims = image_dimensions(f.read(1 << 16), f)
    if dims is None:
        return "unreadable image header (no width and height found)"
    width, height = dims
    if width * height > MAX_PIXELS:
        return (
            f"{width}x{height} pixels is above the limit of {MAX_PIXELS:,} (a decompression bomb; raise "
            "keras_transfer.images.MAX_PIXELS to allow it)"
        )
    return None


def _png_problem(data):
    """A damaged chunk of a PNG (bad checksum or length), as `PIL.Image.verify` finds; None when all are whole."""
    at = 8
    while at + 12 <= len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        if len(body) < length or at + 12 + length > len(data):
            return f"damaged PNG (chunk {kind!r} runs past the end of the file)"
        if zlib.crc32(kind + body) != int.from_bytes(data[at + 8 + length : at + 12 + length], "big"):
            return f"damaged PNG (checksum of chunk {kind.decode('latin-1')!r} does not match)"
        if kind == b"IEND":
            return None
        at += 12 + length
    return "damaged PNG (no IEND chunk)"


def image_dimensions(head, f=None):
    """`(width, height)` declared by an image's header (`head`: its first bytes; `f`: the open file, for JPEGs
    whose metadata pushes the frame header further), or None when none is found."""
    if head.startswith(b"\x89PNG") and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if head[:4] == b"GIF8" and len(head) >= 10:
        return struct.unpack("<HH", head[6:10])
    if head.startswith(b"BM") and len(head) >= 26:
        width, height = struct.unpack("<ii", head[18:26])
        return abs(width), abs(height)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp_dimensions(head)
    if head.startswith(b"\xff\xd8"):
        return _jpeg_dimensions(head, f)
    return None


def _webp_dimensions(head):
    kind = head[12:16]
    if kind == b"VP8 " and len(head) >= 30:
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if kind == b"VP8L" and len(head) >= 25:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X" and len(head) >= 30:
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    return None


def _jpeg_dimensions(head, f):
    header = jpeg_header(head, f)
    return header and header[:2]


def jpeg_header(head, f=None):
    """`(width, height, EXIF orientation)` of a JPEG from its markers up to the frame header (SOF0..SOF15 but
    DHT, JPG and DAC), orientation 1 when there is none; None when no frame header is found. `head`: the file's
    first bytes; `f`: the open file, read on when metadata pushes the frame header further."""
    at, data, orientation = 2, head, 1
    while True:
        if at + 9 > len(data) and f is not None:  # metadata pushed the frame header past what was read
            f.seek(at)
            data, at = f.read(1 << 16), 0
            if len(data) < 9:
                return None
        if at + 9 > len(data) or data[at] != 0xFF:
            return None
        marker, length = data[at + 1], int.from_bytes(data[at + 2 : at + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return width, height, orientation
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == 0xE1 and orientation == 1 and data[at + 4 : at + 10] == b"Exif\x00\x00":
            orientation = _tiff_orientation(data[at + 10 : at + 2 + length])
        if f is not None and at + 2 + length > len(data):
            f.seek(f.tell() - len(data) + at + 2 + length)
            data, at = f.read(1 << 16), 0
            continue
        at += 2 + length


def _tiff_orientation(tiff):
    """Tag 0x0112 among the first 64 entries of an EXIF segment's first directory (as `exif_orientation` reads it
    in TensorFlow ops), 1 when absent."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    directory = struct.unpack(order + "I", tiff[4:8])[0]
    count = struct.unpack(order + "H", tiff[directory : directory + 2])[0] if directory + 2 <= len(tiff) else 0
    for entry in range(directory + 2, directory + 2 + 12 * min(count, 64), 12):
        if entry + 10 > len(tiff):
            break
        if struct.unpack(order + "H", tiff[entry : entry + 2])[0] == 0x0112:
            return struct.unpack(order + "H", tiff[entry + 8 : entry + 10])[0]
    return 1


def decode_image(blob, size=None, dct_scaling=True):
    """Encoded image bytes (a string tensor) -> `uint8` RGB tensor, turned upright by the JPEG's EXIF orientation;
    works in a graph (tf.data, an exported signature).

    `channels=3` turns grayscale, RGBA, palette and 16-bit images into RGB; a GIF gives its first frame.

    Args:
        blob: the encoded bytes.
        size: None for the full image; or `(height, width)`: the image is resized there with antialiasing, and a
            JPEG is decoded at the smallest DCT scale (1/8, 1/4, 1/2) that still leaves it at least that large
            on both sides (libjpeg skips most of the work; never upsampled from a reduced decode).
        dct_scaling: False decodes every JPEG in full before resizing (what the reduced decode is measured
            against).

    Bytes from strangers (a served model's requests) go through `within_pixel_limit` first; image files are
    checked when they are listed (`image_problem`), so the training pipeline does not pay for it twice.
    """
    orientation = exif_orientation(blob)
    # The decode waits for the orientation: independent branches in a tf.data map function measured 2x slower.
    with tf.control_dependencies([orientation]):
        blob = tf.identity(blob)
    if size is not None and dct_scaling:
        jpeg = tf.strings.substr(blob, 0, 3) == b"\xff\xd8\xff"
        image, reduced = tf.cond(
            jpeg,
            lambda: _decode_jpeg_at_least(blob, size, orientation),
            lambda: (_decode_full(blob), tf.constant(False)),
        )
    else:
        image, reduced = _decode_full(blob), tf.constant(False)
    image = tf.cond(orientation == 1, lambda: image, lambda: orient(image, orientation))
    image.set_shape([None, None, 3])
    return image if size is None else _resize(image, size, reduced)


def within_pixel_limit(blob):
    """`blob` (encoded image bytes, a string tensor), passed on only after its header's declared width x height
    was checked against `MAX_PIXELS` (the value when the graph is traced): JPEG SOF, PNG IHDR, GIF, BMP and
    WebP (VP8, VP8L, VP8X) headers are read with a few byte reads, nothing is decoded or allocated. Above the
    limit the op fails with an InvalidArgumentError that names both sizes; in TensorFlow ops."""
    blob = tf.convert_to_tensor(blob, tf.string)
    padded = tf.where(tf.strings.length(blob) >= 32, blob, blob + b"\x00" * 32)

    def read(offset, length, little_endian):
        raw = tf.io.decode_raw(tf.strings.substr(padded, offset, 4), tf.uint8)
        raw = tf.cast(raw[:length] if little_endian else raw[:length][::-1], tf.int64)
        return tf.reduce_sum(raw * tf.constant([1, 256, 65536, 16777216][:length], tf.int64))

    head = tf.strings.substr(padded, 0, 4)
    webp = tf.strings.substr(padded, 12, 4)
    width, height = tf.case(
        [
            (head == b"\x89PNG", lambda: (read(16, 4, False), read(20, 4, False))),
            (head == b"GIF8", lambda: (read(6, 2, True), read(8, 2, True))),
            (tf.strings.substr(head, 0, 2) == b"BM", lambda: (_signed(read(18, 4, True)), _signed(read(22, 4, True)))),
            (webp == b"VP8 ", lambda: (read(26, 2, True) % 16384, read(28, 2, True) % 16384)),
            (webp == b"VP8L", lambda: (read(21, 4, True) % 16384 + 1, read(21, 4, True) // 16384 % 16384 + 1)),
            (webp == b"VP8X", lambda: (read(24, 3, True) + 1, read(27, 3, True) + 1)),
            (tf.strings.substr(head, 0, 3) == b"\xff\xd8\xff", lambda: _jpeg_width_height(blob)),
        ],
        default=lambda: (tf.constant(0, tf.int64), tf.constant(0, tf.int64)),
    )
    check = tf.debugging.Assert(
        width * height <= MAX_PIXELS,
        [
            "An image declares",
            width,
            "x",
            height,
            f"pixels, above the limit of {MAX_PIXELS:,} (a decompression bomb?); raise "
            "keras_transfer.images.MAX_PIXELS before exporting to allow it.",
        ],
    )
    with tf.control_dependencies([check]):
        return tf.identity(blob)


def _signed(value):
    return tf.abs(tf.where(value >= 2**31, value - 2**32, value))


def _jpeg_width_height(blob):
    shape = tf.cast(tf.io.extract_jpeg_shape(blob), tf.int64)
    return shape[1], shape[0]


def _resize(image, size, reduced):
    """Bilinear resize to `size`, rounded to uint8; antialiased after a reduced JPEG decode or when shrinking by
    2x or more on a side (below that, aliasing is mild and the antialiasing kernel measured 2x slower at
    400x300 -> 224)."""
    shrink = reduced | tf.reduce_any(tf.shape(image)[:2] >= 2 * tf.constant(size))
    return tf.cond(shrink, lambda: _resize_to(image, size, True), lambda: _resize_to(image, size, False))


def _resize_to(image, size, antialias, dtype=tf.uint8):
    """Rounded to whole values, in `dtype` (float32: the same values, without the round trip through uint8)."""
    resized = tf.round(tf.image.resize(image, size, method="bilinear", antialias=antialias))
    resized = tf.saturate_cast(resized, tf.uint8) if dtype == tf.uint8 else tf.clip_by_value(resized, 0.0, 255.0)
    resized.set_shape([size[0], size[1], 3])
    return resized


def file_decode_key(path, size, dct_scaling=True):
    """`decode_key` of an image file, from its header; `"other"` for a file that is not a JPEG (`decode_image`
    without its JPEG branches, whose graph costs a second to build and optimize for each pipeline)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
            if not head.startswith(b"\xff\xd8\xff"):
                return "other"
            header = jpeg_header(head, f)
    except (OSError, struct.error):  # decode_image decides, or the file is dropped
        return None
    return decode_key(header, size, dct_scaling)


def decode_key(header, size, dct_scaling=True):
    """`(DCT ratio, antialias)` for an upright JPEG of `jpeg_header` `header`, as `decode_image(blob, size)` would
    choose; None for the rest (no header: not a JPEG; or turned by its EXIF orientation)."""
    if header is None or header[2] != 1:
        return None
    width, height, _ = header
    fits = [r for r in (8, 4, 2) if dct_scaling and -(-height // r) >= size[0] and -(-width // r) >= size[1]]
    ratio = fits[0] if fits else 1
    return ratio, ratio > 1 or height >= 2 * size[0] or width >= 2 * size[1]


def keyed_decoder(keys, size, dtype=tf.uint8):
    """`decode(blob, branch)`: the image decoded as `decode_image(blob, size)` does, by the fixed decoder of the
    `decode_key` `keys[branch]`, or of `"other"` for images known not to be JPEGs (no EXIF orientation to look
    for); one branch: no control flow between decoders."""
    decoders = [group_decoder(key, size, dtype) for key in keys]
    if len(decoders) == 1:
        return lambda blob, branch: decoders[0](blob)
    return lambda blob, branch: tf.switch_case(tf.cast(branch, tf.int32), [lambda d=d: d(blob) for d in decoders])


def _other_decoder(size, dtype):
    return lambda blob: tf.cast(_resize(_decode_full(blob), size, tf.constant(False)), dtype)


def group_decoder(key, size, dtype=tf.uint8, dct_scaling=True):
    if key == "other":
        return _other_decoder(size, dtype)
    if key is None:
        return lambda blob: tf.cast(decode_image(blob, size, dct_scaling), dtype)
    ratio, antialias = key

    def decode(blob):
        image = tf.io.decode_jpeg(blob, channels=3, ratio=ratio, dct_method="INTEGER_FAST" if ratio > 1 else "")
        return _resize_to(image, size, antialias, dtype)

    return decode


def _decode_full(blob):
    image = tf.io.decode_image(blob, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    return image


def _decode_jpeg_at_least(blob, size, orientation):
    """The JPEG decoded at the largest DCT reduction whose output (ceil(side / ratio), as libjpeg scales) still
    covers `size` once turned by `orientation`."""
    shape = tf.io.extract_jpeg_shape(blob)
    turned = (orientation >= 5) & (orientation <= 8)  # stored sideways: the target's sides swap
    need = tf.where(turned, tf.constant([size[1], size[0]]), tf.constant([size[0], size[1]]))
    ratios = (8, 4, 2, 1)
    fits = tf.stack([tf.reduce_all((shape[:2] + r - 1) // r >= need) for r in ratios])
    index = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)  # the first (largest) ratio that fits
    # The fast integer IDCT at reduced scales: its error is averaged away by the downscale that follows.
    image = tf.switch_case(
        index,
        [
            lambda r=r: tf.io.decode_jpeg(blob, channels=3, ratio=r, dct_method="INTEGER_FAST" if r > 1 else "")
            for r in ratios
        ],
    )
    image.set_shape([None, None, 3])
    return image, index < len(ratios) - 1


def _in_float(turn):
    """`turn` applied to the pixels as float32 (exact for 8 bits): a graph with an integer Transpose makes oneDNN
    log an error line ("supports DT_UINT8 only on platforms with AVX-512") on CPUs without AVX-512. A Transpose
    right after the cast would be moved before it by Grappler, so the turns start with a reverse (rot90)."""
    return lambda x: tf.cast(turn(tf.cast(x, tf.float32)), x.dtype)


# EXIF orientation -> how to turn the stored pixels upright (as PIL's ImageOps.exif_transpose does).
_ORIENTATIONS = (
    lambda x: x,  # 1: upright
    lambda x: tf.image.flip_left_right(x),  # 2: mirrored
    lambda x: tf.reverse(x, [0, 1]),  # 3: upside down (turned 180 degrees; rot90 would build the Transposes too)
    lambda x: tf.image.flip_up_down(x),  # 4: mirrored upside down
    _in_float(lambda x: tf.image.flip_up_down(tf.image.rot90(x, 1))),  # 5: mirrored, turned (the transpose)
    _in_float(lambda x: tf.image.rot90(x, 3)),  # 6: stored turned left (phones held upright): turn 90 degrees cw
    _in_float(lambda x: tf.image.flip_left_right(tf.image.rot90(x, 1))),  # 7: transverse
    _in_float(lambda x: tf.image.rot90(x, 1)),  # 8: stored turned right: turn 90 degrees counter-clockwise
)


def orient(image, orientation):
    """`image` (height, width, channels) turned as EXIF `orientation` (1-8; anything else: unchanged) says."""
    index = tf.where((orientation >= 1) & (orientation <= 8), orientation - 1, 0)
    turned = tf.switch_case(tf.cast(index, tf.int32), [lambda f=f: f(image) for f in _ORIENTATIONS])
    turned.set_shape([None, None, image.shape[-1]])
    return turned


def exif_orientation(blob):
    """The EXIF orientation tag (1-8) of JPEG bytes, 1 when there is none; in TensorFlow ops.

    Looks where cameras and phones put the EXIF segment: the first marker segment after the start of image, or
    the second after a JFIF (APP0) one; then tag 0x0112 among the first 64 entries of the first directory. A few
    byte reads, not a scan, so it costs little next to the decode.
    """
    blob = tf.convert_to_tensor(blob, tf.string)

    def u16_be(offset):
        return tf.cast(
            tf.io.decode_raw(tf.strings.substr(blob, offset, 2), tf.uint16, little_endian=False)[0], tf.int32
        )

    padded = tf.strings.length(blob) >= 64
    blob = tf.where(padded, blob, blob + b"\x00" * 64)
    start = tf.where(tf.strings.substr(blob, 2, 2) == b"\xff\xe0", 4 + u16_be(4), 2)  # after a JFIF APP0 segment
    start = tf.minimum(start, tf.strings.length(blob) - 64)
    found = (
        (tf.strings.substr(blob, 0, 2) == b"\xff\xd8")
        & (tf.strings.substr(blob, start, 2) == b"\xff\xe1")
        & (tf.strings.substr(blob, start + 4, 6) == b"Exif\x00\x00")
    )
    return tf.cond(
        found,
        lambda: _orientation_tag(tf.strings.substr(blob, start + 10, u16_be(start + 2) - 8)),
        lambda: tf.constant(1),
    )  # most files have no EXIF segment: nothing more to read


def _orientation_tag(segment):
    """Tag 0x0112 of the first directory of an EXIF segment's TIFF structure, 1 when absent."""
    tiff = segment + b"\x00" * 1024  # room for every read below
    little = tf.strings.substr(tiff, 0, 2) == b"II"
    limit = tf.strings.length(tiff) - 1024

    def read(offsets, width, dtype):
        pos = tf.clip_by_value(offsets, 0, limit)
        chunks = tf.strings.substr(tiff, pos, tf.fill(tf.shape(pos), width))
        le, be = (
            tf.io.decode_raw(chunks, dtype, little_endian=True),
            tf.io.decode_raw(chunks, dtype, little_endian=False),
        )
        return tf.cast(tf.where(little, le, be)[..., 0], tf.int32)

    directory = read(tf.constant([4]), 4, tf.int32)[0]
    entries = directory + 2 + 12 * tf.range(64)
    count = read(tf.reshape(directory, [1]), 2, tf.uint16)[0]
    tags, values = read(entries, 2, tf.uint16), read(entries + 8, 2, tf.uint16)
    match = (tags == 0x0112) & (tf.range(64) < count)
    return tf.where(tf.reduce_any(match), tf.reduce_max(tf.where(match, values, 0)), 1)


def read_image(path):
    """The bytes of the image file at `path`, checked first with `image_problem`.

    Raises:
        ValueError: naming the file and what is wrong with it.
    """
    reason = image_problem(path) if os.path.isfile(path) else "no such file"
    if reason:
        raise ValueError(f"Cannot read the image {path!r}: {reason}. Received: {path!r}")
    with open(path, "rb") as f:
        return f.read()


def image_array(blob, name="image", size=None, dct_scaling=True):
    """Encoded bytes -> float32 NumPy array `(height, width, 3)` in 0-255, eagerly (`size`, `dct_scaling`: see
    `decode_image`).

    Raises:
        ValueError: when the bytes are not a readable image, naming `name`.
    """
    try:
        image = decode_image(within_pixel_limit(blob), size, dct_scaling)
    except (tf.errors.InvalidArgumentError, ValueError) as e:
        raise ValueError(f"{name!r} is not a readable {FORMATS} image: {str(e).splitlines()[0][:200]}") from None
    return np.asarray(image, np.float32)
