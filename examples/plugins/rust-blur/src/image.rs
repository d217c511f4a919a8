//! 8-bit binary PGM images and the two operations of the image contract.

/// A grayscale image, row-major, one byte per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height` bytes.
    pub pixels: Vec<u8>,
}

/// Parses a binary "P5" PGM with maxval 255: `P5`, width, height, maxval
/// separated by ASCII whitespace (`#` comment lines allowed between them),
/// one whitespace byte, then exactly `width * height` bytes.
///
/// # Errors
/// `"input KEY: not a P5 PGM with maxval 255"` for anything else.
pub fn parse_pgm(data: &[u8], name: &str) -> Result<Image, String> {
    let bad = || format!("input {name}: not a P5 PGM with maxval 255");
    let mut fields: Vec<&[u8]> = Vec::with_capacity(4);
    let mut i = 0;
    while fields.len() < 4 {
        while i < data.len() && data[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < data.len() && data[i] == b'#' {
            while i < data.len() && data[i] != b'\n' && data[i] != b'\r' {
                i += 1;
            }
            continue;
        }
        let start = i;
        while i < data.len() && !data[i].is_ascii_whitespace() && data[i] != b'#' {
            i += 1;
        }
        if start == i {
            return Err(bad());
        }
        fields.push(&data[start..i]);
    }
    // Exactly one whitespace byte separates maxval from the pixels.
    if i >= data.len() || !data[i].is_ascii_whitespace() {
        return Err(bad());
    }
    i += 1;
    let number = |f: &[u8]| -> Option<usize> {
        if f.is_empty() || !f.iter().all(u8::is_ascii_digit) || f.len() > 9 {
            return None;
        }
        std::str::from_utf8(f).ok()?.parse().ok()
    };
    let (Some(width), Some(height), Some(maxval)) =
        (number(fields[1]), number(fields[2]), number(fields[3]))
    else {
        return Err(bad());
    };
    if fields[0] != b"P5" || maxval != 255 || width == 0 || height == 0 {
        return Err(bad());
    }
    let pixels = &data[i..];
    if Some(pixels.len()) != width.checked_mul(height) {
        return Err(bad());
    }
    Ok(Image {
        width,
        height,
        pixels: pixels.to_vec(),
    })
}

/// The PGM file of `img`: exactly `P5\n<w> <h>\n255\n` and the pixels.
pub fn encode_pgm(img: &Image) -> Vec<u8> {
    let mut out = format!("P5\n{} {}\n255\n", img.width, img.height).into_bytes();
    out.extend_from_slice(&img.pixels);
    out
}

/// Rows `y0..y1` of one pass of the 3x3 binomial kernel
/// `[[1,2,1],[2,4,2],[1,2,1]]` with clamped edges, `(sum + 8) >> 4`.
pub fn blur_rows(src: &Image, dst: &mut [u8], y0: usize, y1: usize) {
    let (w, h) = (src.width, src.height);
    let p = |y: usize, x: usize| u32::from(src.pixels[y * w + x]);
    for y in y0..y1.min(h) {
        let (ym, yp) = (y.saturating_sub(1), (y + 1).min(h - 1));
        for x in 0..w {
            let (xm, xp) = (x.saturating_sub(1), (x + 1).min(w - 1));
            let sum = p(ym, xm)
                + 2 * p(ym, x)
                + p(ym, xp)
                + 2 * p(y, xm)
                + 4 * p(y, x)
                + 2 * p(y, xp)
                + p(yp, xm)
                + 2 * p(yp, x)
                + p(yp, xp);
            // At most 16 * 255 + 8 >> 4 = 255: fits.
            dst[y * w + x] = ((sum + 8) >> 4) as u8;
        }
    }
}

/// Rows `y0..y1` of the threshold: 255 where `pixel >= level`, else 0.
pub fn threshold_rows(src: &Image, dst: &mut [u8], level: u8, y0: usize, y1: usize) {
    let w = src.width;
    let (a, b) = (y0 * w, y1.min(src.height) * w);
    for (d, s) in dst[a..b].iter_mut().zip(&src.pixels[a..b]) {
        *d = if *s >= level { 255 } else { 0 };
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pgm_round_trip_with_comments_and_errors() {
        let img = parse_pgm(
            b"P5\n# made by hand\n3 2\n# max\n255\n\x00\x01\x02\x03\x04\x05",
            "a.pgm",
        )
        .unwrap();
        assert_eq!((img.width, img.height), (3, 2));
        assert_eq!(encode_pgm(&img), b"P5\n3 2\n255\n\x00\x01\x02\x03\x04\x05");
        for bad in [
            &b"P6\n1 1\n255\n\x00"[..],
            b"P5\n1 1\n65535\n\x00\x00",
            b"P5\n2 1\n255\n\x00",
            b"P5\n1 1\n255",
            b"",
        ] {
            let e = parse_pgm(bad, "raw/cells.pgm").unwrap_err();
            assert_eq!(e, "input raw/cells.pgm: not a P5 PGM with maxval 255");
        }
    }

    #[test]
    fn blur_of_a_flat_image_is_flat_and_a_dot_spreads_binomially() {
        let flat = Image {
            width: 4,
            height: 3,
            pixels: vec![77; 12],
        };
        let mut out = vec![0; 12];
        blur_rows(&flat, &mut out, 0, 3);
        assert_eq!(out, vec![77; 12]);
        let mut dot = Image {
            width: 3,
            height: 3,
            pixels: vec![0; 9],
        };
        dot.pixels[4] = 160;
        let mut out = vec![0; 9];
        blur_rows(&dot, &mut out, 0, 3);
        assert_eq!(out, vec![10, 20, 10, 20, 40, 20, 10, 20, 10]);
    }
}
