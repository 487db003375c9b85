defmodule Drove.LivenessTest do
  use ExUnit.Case, async: true
  import Bitwise

  alias Drove.{Liveness, Native}
  alias Drove.TestCluster, as: C

  test "tcp_peer_closed/1 tells an open socket from one whose peer ended the stream" do
    {:ok, listen} = :gen_tcp.listen(0, [:binary, active: false, ip: {127, 0, 0, 1}])
    {:ok, port} = :inet.port(listen)
    {:ok, client} = :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, active: false])
    {:ok, server} = :gen_tcp.accept(listen)
    {:ok, fd} = :inet.getfd(client)

    refute Native.tcp_peer_closed(fd)
    # unread data does not hide the end of the stream
    :ok = :gen_tcp.send(server, "unread")
    refute Native.tcp_peer_closed(fd)
    :ok = :gen_tcp.close(server)
    C.wait_until(fn -> Native.tcp_peer_closed(fd) end)
    assert {:ok, "unread"} = :gen_tcp.recv(client, 0)

    :gen_tcp.close(client)
    :gen_tcp.close(listen)
  end

  test "tcp_peer_closed/1 validates its argument" do
    for bad <- [-1, :fd, 1.5, 1 <<< 40] do
      assert_raise ArgumentError, fn -> Native.tcp_peer_closed(bad) end
    end
  end

  test "this node is always up; a node that is not connected is not" do
    assert Liveness.node_up?(node())
    refute Liveness.node_up?(:"nobody@127.0.0.1")
    assert Liveness.pid_up?(self())
    refute Liveness.pid_up?(spawn(fn -> :ok end) |> tap(&Process.exit(&1, :kill)))
  end
end
