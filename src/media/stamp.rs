//! Capture-time stamps drawn into the picture, for measuring glass-to-glass latency.
//!
//! The dev board's test source writes the wall-clock time (milliseconds since the Unix
//! epoch, modulo 2^36) into the top of each frame as a row of 40 black or white blocks,
//! each 1/40 of the width square: big enough to survive H.264 at any sane bitrate. A
//! receiver that decodes the frame reads the blocks back and subtracts from its own clock
//! (same machine, or synchronised clocks). `web/app.js` reads the same pattern from the
//! `<video>` element.
//!
//! Layout, left to right: `1`, `0` (a marker that a plain picture is unlikely to match),
//! 36 bits of the time (most significant first), the even parity of those 36 bits, `1`.

use std::time::{SystemTime, UNIX_EPOCH};

/// The name of the element whose output gets stamped.
pub const ELEMENT: &str = "stamp";

/// Blocks across the picture.
pub const BLOCKS: usize = 40;
/// Bits of time carried.
pub const TIME_BITS: u32 = 36;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
const BLACK: u8 = 16;
const WHITE: u8 = 235;

/// Milliseconds since the Unix epoch, modulo 2^36, as stamped.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        & TIME_MASK
}

/// The 40 bits drawn for `time_ms`.
pub fn bits(time_ms: u64) -> [bool; BLOCKS] {
    let value = time_ms & TIME_MASK;
    let mut bits = [false; BLOCKS];
    bits[0] = true;
    bits[1] = false;
    for i in 0..TIME_BITS as usize {
        bits[2 + i] = (value >> (TIME_BITS as usize - 1 - i)) & 1 == 1;
    }
    bits[38] = value.count_ones() % 2 == 1;
    bits[39] = true;
    bits
}

/// The time in `bits`, if they are a stamp.
pub fn value(bits: &[bool; BLOCKS]) -> Option<u64> {
    if !(bits[0] && !bits[1] && bits[39]) {
        return None;
    }
    let value = bits[2..38]
        .iter()
        .fold(0u64, |acc, &bit| (acc << 1) | u64::from(bit));
    (bits[38] == (value.count_ones() % 2 == 1)).then_some(value)
}

/// Side of one block, in pixels, for a picture `width` wide.
pub fn block_size(width: usize) -> usize {
    (width / BLOCKS).max(2)
}

/// Draws `time_ms` into a luma plane `y` (`stride` bytes per row) of a picture
/// `width` × `height`.
pub fn write_luma(y: &mut [u8], stride: usize, width: usize, height: usize, time_ms: u64) {
    let size = block_size(width);
    let rows = size.min(height);
    for (index, bit) in bits(time_ms).iter().enumerate() {
        let level = if *bit { WHITE } else { BLACK };
        let x0 = index * size;
        let x1 = (x0 + size).min(width);
        for row in 0..rows {
            if let Some(line) = y.get_mut(row * stride + x0..row * stride + x1) {
                line.fill(level);
            }
        }
    }
}

/// Makes the chroma under the blocks neutral in one half-resolution chroma `plane` (I420),
/// so colour from the picture does not bleed into them.
pub fn neutral_chroma(plane: &mut [u8], stride: usize, width: usize, height: usize) {
    let rows = block_size(width).min(height) / 2;
    let span = (BLOCKS * block_size(width)).min(width) / 2;
    for row in 0..rows {
        if let Some(line) = plane.get_mut(row * stride..row * stride + span) {
            line.fill(128);
        }
    }
}

/// Reads a stamp from a luma plane, sampling the middle half of each block.
pub fn read_luma(y: &[u8], stride: usize, width: usize, height: usize) -> Option<u64> {
    let size = block_size(width);
    if size * BLOCKS > width || size > height {
        return None;
    }
    let mut bits = [false; BLOCKS];
    for (index, bit) in bits.iter_mut().enumerate() {
        let (x0, x1) = (index * size + size / 4, index * size + size * 3 / 4);
        let (y0, y1) = (size / 4, size * 3 / 4);
        let mut sum: u64 = 0;
        let mut count: u64 = 0;
        for row in y0..y1 {
            let line = y.get(row * stride + x0..row * stride + x1)?;
            sum += line.iter().map(|&p| u64::from(p)).sum::<u64>();
            count += line.len() as u64;
        }
        *bit = sum > count * 128;
    }
    value(&bits)
}

/// Milliseconds from a stamp to `now_ms` (both modulo 2^36).
pub fn age_ms(stamp: u64, now_ms: u64) -> u64 {
    now_ms.wrapping_sub(stamp) & TIME_MASK
}

/// Stamps every frame leaving the element named [`ELEMENT`] in `pipeline`, if it has one.
pub fn attach(pipeline: &gstreamer::Pipeline) {
    use gstreamer as gst;
    use gstreamer::prelude::*;
    let Some(pad) = pipeline
        .by_name(ELEMENT)
        .and_then(|element| element.static_pad("src"))
    else {
        return;
    };
    pad.add_probe(gst::PadProbeType::BUFFER, |pad, info| {
        let Some(info_video) = pad
            .current_caps()
            .and_then(|caps| gstreamer_video::VideoInfo::from_caps(&caps).ok())
        else {
            return gst::PadProbeReturn::Ok;
        };
        if info_video.format() != gstreamer_video::VideoFormat::I420 {
            return gst::PadProbeReturn::Ok;
        }
        if let Some(gst::PadProbeData::Buffer(buffer)) = &mut info.data {
            let buffer = buffer.make_mut();
            if let Ok(mut frame) =
                gstreamer_video::VideoFrameRef::from_buffer_ref_writable(buffer, &info_video)
            {
                let (width, height) = (info_video.width() as usize, info_video.height() as usize);
                let strides = info_video.stride();
                let (stride, chroma_stride) = (strides[0] as usize, strides[1] as usize);
                let time = now_ms();
                if let Ok(y) = frame.plane_data_mut(0) {
                    write_luma(y, stride, width, height, time);
                }
                for plane in 1..3 {
                    if let Ok(data) = frame.plane_data_mut(plane) {
                        neutral_chroma(data, chroma_stride, width, height);
                    }
                }
            }
        }
        gst::PadProbeReturn::Ok
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_through_a_frame() {
        let (width, height) = (1280, 720);
        let mut y = vec![90u8; width * height];
        for time in [0, 1, 0x0f_ffff_ffff, 1_700_000_123_456 & TIME_MASK] {
            write_luma(&mut y, width, width, height, time);
            assert_eq!(read_luma(&y, width, width, height), Some(time));
        }
        let mut u = vec![60u8; width * height / 4];
        neutral_chroma(&mut u, width / 2, width, height);
        assert!(u[..width / 2].iter().all(|&p| p == 128));
        // Below the strip (32 rows of luma, 16 of chroma) the picture is left alone.
        assert!(u[16 * width / 2..][..width / 2].iter().all(|&p| p == 60));
    }

    #[test]
    fn noise_survives_and_plain_pictures_do_not_read() {
        let (width, height) = (640, 360);
        let mut y = vec![0u8; width * height];
        write_luma(&mut y, width, width, height, 123_456);
        // Compression blurs the blocks' edges and shifts levels a little.
        for (i, p) in y.iter_mut().enumerate() {
            *p = p.saturating_add((i % 7) as u8 * 4).saturating_sub(12);
        }
        assert_eq!(read_luma(&y, width, width, height), Some(123_456));
        assert_eq!(
            read_luma(&vec![200u8; width * height], width, width, height),
            None
        );
        assert_eq!(
            read_luma(&vec![20u8; width * height], width, width, height),
            None
        );
    }

    #[test]
    fn ages_wrap_around() {
        assert_eq!(age_ms(100, 130), 30);
        assert_eq!(age_ms(TIME_MASK - 9, 20), 30);
    }
}
