"""The MRD wire protocol (mrprior.io.protocol) against ismrmrd.serialization and bad input."""

from __future__ import annotations

import io
import socket
import struct
import threading

import ismrmrd
import numpy as np
import pytest
from ismrmrd.serialization import ConfigFile, ConfigText, ProtocolDeserializer, ProtocolSerializer

from mrprior.errors import ProtocolError
from mrprior.io.protocol import (
    MessageId,
    MessageReader,
    MessageWriter,
    MRDConnection,
    TruncatedMessageError,
    encode_message,
)

HEADER_XML = """<?xml version="1.0"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><experimentalConditions>
<H1resonanceFrequency_Hz>63500000</H1resonanceFrequency_Hz></experimentalConditions><encoding><encodedSpace><matrixSize><x>8</x>
<y>4</y><z>1</z></matrixSize><fieldOfView_mm><x>100</x><y>100</y><z>5</z></fieldOfView_mm>
</encodedSpace><reconSpace><matrixSize><x>8</x><y>4</y><z>1</z></matrixSize><fieldOfView_mm>
<x>100</x><y>100</y><z>5</z></fieldOfView_mm></reconSpace><encodingLimits/>
<trajectory>cartesian</trajectory>
</encoding></ismrmrdHeader>"""


def _acq(seed: int = 0, coils: int = 3, samples: int = 8) -> ismrmrd.Acquisition:
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((coils, samples)) + 1j * rng.standard_normal((coils, samples))
    acq = ismrmrd.Acquisition.from_array(data.astype(np.complex64))
    acq.idx.kspace_encode_step_1 = seed
    acq.scan_counter = seed
    return acq


def _image() -> ismrmrd.Image:
    img = ismrmrd.Image.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), transpose=False)
    meta = ismrmrd.Meta()
    meta["DataRole"] = "Image"
    img.attribute_string = meta.serialize()
    img.image_index = 7
    return img


def test_reads_what_ismrmrd_serializer_writes() -> None:
    buf = io.BytesIO()
    ser = ProtocolSerializer(buf)
    ser.serialize(ConfigFile("mrprior_sense"))
    ser.serialize(ConfigText("<configuration/>"))
    ser.serialize(ismrmrd.xsd.CreateFromDocument(HEADER_XML))
    ser.serialize("some text")
    acqs = [_acq(i) for i in range(3)]
    for a in acqs:
        ser.serialize(a)
    ser.serialize(_image())
    ser.serialize(ismrmrd.Waveform.from_array(np.arange(6, dtype=np.uint32).reshape(2, 3)))
    ser.close()
    buf.seek(0)
    msgs = list(MessageReader(buf))
    kinds = [m.id for m in msgs]
    assert kinds == [
        MessageId.CONFIG_FILE,
        MessageId.CONFIG_TEXT,
        MessageId.HEADER,
        MessageId.TEXT,
        *[MessageId.ACQUISITION] * 3,
        MessageId.IMAGE,
        MessageId.WAVEFORM,
    ]
    assert msgs[0].payload == "mrprior_sense"
    assert msgs[0].nbytes == 2 + 1024
    assert msgs[1].payload == "<configuration/>"
    assert "ismrmrdHeader" in msgs[2].payload
    for a, m in zip(acqs, msgs[4:7], strict=True):
        np.testing.assert_array_equal(m.payload.data, a.data)
        assert m.payload.idx.kspace_encode_step_1 == a.idx.kspace_encode_step_1
    img = msgs[7].payload
    np.testing.assert_array_equal(img.data, _image().data)
    assert img.image_index == 7
    assert sum(m.nbytes for m in msgs) + 2 == len(buf.getvalue())


def test_ismrmrd_deserializer_reads_what_we_write() -> None:
    buf = io.BytesIO()
    w = MessageWriter(buf)
    w.send_config_file("default")
    w.send_header(HEADER_XML)
    w.send(_acq(1))
    w.send(_image())
    w.send_close()
    buf.seek(0)
    items = list(ProtocolDeserializer(buf).deserialize())
    assert isinstance(items[0], ConfigFile) and items[0] == "default"
    assert items[1].encoding[0].trajectory.value == "cartesian"
    np.testing.assert_array_equal(items[2].data, _acq(1).data)
    np.testing.assert_array_equal(items[3].data, _image().data)
    with pytest.raises(ProtocolError, match="after CLOSE"):
        w.send(_acq(2))


def test_error_message_layout() -> None:
    raw = encode_message("boom: bad thing", MessageId.ERROR)
    assert raw[:2] == struct.pack("<H", 8)
    assert struct.unpack("<Q", raw[2:10])[0] == len("boom: bad thing")
    msg = MessageReader(io.BytesIO(raw)).read()
    assert msg is not None and msg.id is MessageId.ERROR and msg.payload == "boom: bad thing"


@pytest.mark.parametrize(
    ("cut", "part"),
    [
        (1, "message id"),
        (2 + 100, "ACQUISITION header"),
        (2 + 340 + 10, "ACQUISITION payload"),
    ],
)
def test_truncated_acquisition_names_the_part(cut: int, part: str) -> None:
    raw = encode_message(_acq())
    with pytest.raises(TruncatedMessageError, match=part):
        MessageReader(io.BytesIO(raw[:cut])).read()


def test_every_truncation_point_raises() -> None:
    raw = encode_message(_image()) + encode_message(HEADER_XML, MessageId.HEADER)
    for cut in range(1, len(raw)):
        reader = MessageReader(io.BytesIO(raw[:cut]))
        with pytest.raises(TruncatedMessageError):
            while reader.read() is not None:
                pass


def test_clean_eof_and_missing_close() -> None:
    assert MessageReader(io.BytesIO(b"")).read(eof_ok=True) is None
    with pytest.raises(TruncatedMessageError, match="before CLOSE"):
        list(MessageReader(io.BytesIO(encode_message(_acq()))))


def test_unknown_id_and_oversized_lengths() -> None:
    with pytest.raises(ProtocolError, match="unknown message id 4321"):
        MessageReader(io.BytesIO(struct.pack("<H", 4321))).read()
    huge_text = struct.pack("<HI", 3, 0xFFFFFFF0)
    with pytest.raises(ProtocolError, match="oversized HEADER payload"):
        MessageReader(io.BytesIO(huge_text)).read()
    hdr = ismrmrd.AcquisitionHeader()
    hdr.version, hdr.number_of_samples, hdr.active_channels = 1, 65535, 65535
    head = bytes(hdr)
    with pytest.raises(ProtocolError, match="oversized ACQUISITION payload"):
        MessageReader(io.BytesIO(struct.pack("<H", 1008) + head)).read()
    err = struct.pack("<HQ", 8, 1 << 40)
    with pytest.raises(ProtocolError, match="oversized ERROR"):
        MessageReader(io.BytesIO(err), max_text_bytes=1024).read()


def test_image_with_unknown_data_type() -> None:
    raw = bytearray(encode_message(_image()))
    struct.pack_into("<H", raw, 2 + 2, 99)  # ImageHeader.data_type follows version
    with pytest.raises(ProtocolError, match="unknown data type 99"):
        MessageReader(io.BytesIO(bytes(raw))).read()


def test_concurrent_sends_do_not_interleave() -> None:
    a, b = socket.socketpair()
    conn = MRDConnection(a, linger_s=0)
    n_threads, per_thread = 4, 25

    def sender(k: int) -> None:
        for i in range(per_thread):
            conn.send(_acq(seed=k * 1000 + i, coils=4, samples=256))

    received = []

    def receiver() -> None:
        received.extend(MessageReader(b))

    rt = threading.Thread(target=receiver)
    rt.start()
    threads = [threading.Thread(target=sender, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    conn.close()
    rt.join(10)
    assert len(received) == n_threads * per_thread
    for m in received:
        np.testing.assert_array_equal(m.payload.data, _acq(m.payload.scan_counter, 4, 256).data)
    b.close()


def test_close_is_idempotent_and_survives_a_gone_peer() -> None:
    a, b = socket.socketpair()
    b.close()
    conn = MRDConnection(a, linger_s=0.1)
    conn.close()
    conn.close()
