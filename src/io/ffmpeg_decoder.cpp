// Decoding through FFmpeg's libraries (libavformat, libavcodec), for what
// libsndfile does not read: M4A/AAC, video containers, and the rest. Like
// the official command (which runs the ffmpeg program), the first audio
// stream of the file is decoded at its own rate; the decoder's sample format
// is converted to float the way FFmpeg's converter does (int16 / 2^15,
// int32 / 2^31), so the samples equal `ffmpeg -f f32le`'s. Built only with
// FASTDEMUCS_FFMPEG.
extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/avutil.h>
#include <libavutil/channel_layout.h>
#include <libavutil/samplefmt.h>
}

#include <memory>
#include <mutex>
#include <vector>

#include "io/codecs.h"

namespace fastdemucs {
namespace io_detail {
namespace {

std::string av_error_text(int code) {
    char text[AV_ERROR_MAX_STRING_SIZE] = {0};
    av_strerror(code, text, sizeof text);
    return text;
}

struct FormatCloser {
    void operator()(AVFormatContext* context) const { avformat_close_input(&context); }
};
struct CodecCloser {
    void operator()(AVCodecContext* context) const { avcodec_free_context(&context); }
};
struct PacketCloser {
    void operator()(AVPacket* packet) const { av_packet_free(&packet); }
};
struct FrameCloser {
    void operator()(AVFrame* frame) const { av_frame_free(&frame); }
};

// One sample of a decoded frame as float, as FFmpeg's own converter does.
template <typename T>
float to_float(T value);
template <>
float to_float<uint8_t>(uint8_t v) { return (static_cast<int>(v) - 0x80) * (1.0f / (1 << 7)); }
template <>
float to_float<int16_t>(int16_t v) { return v * (1.0f / (1 << 15)); }
template <>
float to_float<int32_t>(int32_t v) { return v * (1.0f / (1U << 31)); }
template <>
float to_float<int64_t>(int64_t v) { return static_cast<float>(v * (1.0 / 9223372036854775808.0)); }
template <>
float to_float<float>(float v) { return v; }
template <>
float to_float<double>(double v) { return static_cast<float>(v); }

// Collects decoded frames as planar float channels.
class Collector {
public:
    // False with `error` set when the frame cannot be used.
    bool add(const AVFrame& frame, std::string& error) {
        const int channels = frame.ch_layout.nb_channels;
        if (channels <= 0 || frame.sample_rate <= 0) {
            error = "a decoded frame has no channels or sample rate";
            return false;
        }
        if (channels_ == 0) {
            channels_ = channels;
            samplerate_ = frame.sample_rate;
            planes_.resize(channels);
        } else if (channels != channels_ || frame.sample_rate != samplerate_) {
            error = "the audio stream changes its channels or sample rate midway (" + std::to_string(channels_) +
                    " ch, " + std::to_string(samplerate_) + " Hz, then " + std::to_string(channels) + " ch, " +
                    std::to_string(frame.sample_rate) + " Hz)";
            return false;
        }
        const int n = frame.nb_samples;
        switch (static_cast<AVSampleFormat>(frame.format)) {
            case AV_SAMPLE_FMT_U8: append<uint8_t>(frame, n, false); break;
            case AV_SAMPLE_FMT_U8P: append<uint8_t>(frame, n, true); break;
            case AV_SAMPLE_FMT_S16: append<int16_t>(frame, n, false); break;
            case AV_SAMPLE_FMT_S16P: append<int16_t>(frame, n, true); break;
            case AV_SAMPLE_FMT_S32: append<int32_t>(frame, n, false); break;
            case AV_SAMPLE_FMT_S32P: append<int32_t>(frame, n, true); break;
            case AV_SAMPLE_FMT_S64: append<int64_t>(frame, n, false); break;
            case AV_SAMPLE_FMT_S64P: append<int64_t>(frame, n, true); break;
            case AV_SAMPLE_FMT_FLT: append<float>(frame, n, false); break;
            case AV_SAMPLE_FMT_FLTP: append<float>(frame, n, true); break;
            case AV_SAMPLE_FMT_DBL: append<double>(frame, n, false); break;
            case AV_SAMPLE_FMT_DBLP: append<double>(frame, n, true); break;
            default:
                error = "unsupported decoded sample format " + std::to_string(frame.format);
                return false;
        }
        return true;
    }

    bool empty() const { return planes_.empty() || planes_[0].empty(); }

    Audio take() {
        Audio audio;
        audio.channels = channels_;
        audio.samplerate = samplerate_;
        audio.samples = static_cast<int64_t>(planes_[0].size());
        audio.data.resize(static_cast<size_t>(channels_) * audio.samples);
        for (int c = 0; c < channels_; ++c) {
            std::copy(planes_[c].begin(), planes_[c].end(), audio.channel(c));
            std::vector<float>().swap(planes_[c]);
        }
        return audio;
    }

private:
    template <typename T>
    void append(const AVFrame& frame, int n, bool planar) {
        for (int c = 0; c < channels_; ++c) {
            std::vector<float>& plane = planes_[c];
            const size_t at = plane.size();
            plane.resize(at + n);
            if (planar) {
                const T* source = reinterpret_cast<const T*>(frame.extended_data[c]);
                for (int t = 0; t < n; ++t) plane[at + t] = to_float<T>(source[t]);
            } else {
                const T* source = reinterpret_cast<const T*>(frame.extended_data[0]);
                for (int t = 0; t < n; ++t) plane[at + t] = to_float<T>(source[t * channels_ + c]);
            }
        }
    }

    int channels_ = 0;
    int samplerate_ = 0;
    std::vector<std::vector<float>> planes_;
};

}  // namespace

bool decode_with_ffmpeg(const std::string& path, Audio& out, std::string& error) {
    static std::once_flag quiet;
    std::call_once(quiet, [] { av_log_set_level(AV_LOG_QUIET); });

    AVFormatContext* raw_format = nullptr;
    int status = avformat_open_input(&raw_format, path.c_str(), nullptr, nullptr);
    if (status < 0) {
        error = av_error_text(status);
        return false;
    }
    std::unique_ptr<AVFormatContext, FormatCloser> format(raw_format);
    status = avformat_find_stream_info(format.get(), nullptr);
    if (status < 0) {
        error = av_error_text(status);
        return false;
    }
    int stream_index = -1;
    for (unsigned i = 0; i < format->nb_streams; ++i) {
        if (stream_index < 0 && format->streams[i]->codecpar->codec_type == AVMEDIA_TYPE_AUDIO)
            stream_index = static_cast<int>(i);
        else
            format->streams[i]->discard = AVDISCARD_ALL;
    }
    if (stream_index < 0) {
        error = "no audio stream";
        return false;
    }
    const AVStream* stream = format->streams[stream_index];
    const AVCodec* codec = avcodec_find_decoder(stream->codecpar->codec_id);
    if (!codec) {
        error = std::string("no decoder for the audio codec ") + avcodec_get_name(stream->codecpar->codec_id);
        return false;
    }
    std::unique_ptr<AVCodecContext, CodecCloser> decoder(avcodec_alloc_context3(codec));
    if (!decoder || avcodec_parameters_to_context(decoder.get(), stream->codecpar) < 0) {
        error = "cannot set up the decoder";
        return false;
    }
    decoder->pkt_timebase = stream->time_base;
    decoder->thread_count = 1;
    status = avcodec_open2(decoder.get(), codec, nullptr);
    if (status < 0) {
        error = "cannot open the " + std::string(codec->name) + " decoder: " + av_error_text(status);
        return false;
    }

    std::unique_ptr<AVPacket, PacketCloser> packet(av_packet_alloc());
    std::unique_ptr<AVFrame, FrameCloser> frame(av_frame_alloc());
    if (!packet || !frame) {
        error = "out of memory";
        return false;
    }
    Collector collector;
    // Takes every frame the decoder has ready; false on a fatal error.
    const auto drain = [&]() {
        for (;;) {
            const int got = avcodec_receive_frame(decoder.get(), frame.get());
            if (got == AVERROR(EAGAIN) || got == AVERROR_EOF) return true;
            if (got < 0) {
                // A damaged packet: skipped, as the ffmpeg program does.
                if (got == AVERROR_INVALIDDATA) return true;
                error = "decoding failed: " + av_error_text(got);
                return false;
            }
            const bool added = collector.add(*frame, error);
            av_frame_unref(frame.get());
            if (!added) return false;
        }
    };
    while ((status = av_read_frame(format.get(), packet.get())) >= 0) {
        if (packet->stream_index == stream_index) {
            int sent = avcodec_send_packet(decoder.get(), packet.get());
            if (sent == AVERROR(EAGAIN)) {  // the decoder is full: empty it, then retry
                if (!drain()) return false;
                sent = avcodec_send_packet(decoder.get(), packet.get());
            }
            if (sent < 0 && sent != AVERROR(EAGAIN) && sent != AVERROR_INVALIDDATA) {
                av_packet_unref(packet.get());
                error = "decoding failed: " + av_error_text(sent);
                return false;
            }
        }
        av_packet_unref(packet.get());
        if (!drain()) return false;
    }
    // End of file, or a read error past which the ffmpeg program would stop
    // too: decode what was read.
    avcodec_send_packet(decoder.get(), nullptr);
    if (!drain()) return false;
    if (collector.empty()) {
        error = status != AVERROR_EOF ? av_error_text(status) : "no audio could be decoded";
        return false;
    }
    out = collector.take();
    return true;
}

}  // namespace io_detail
}  // namespace fastdemucs
