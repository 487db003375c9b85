defmodule Drove.Test.Wire do
  @moduledoc """
  Real wires for multi-node tests: every distribution connection between two peers goes
  through a TCP proxy on the test runner that can add latency, limit bandwidth, stall,
  black-hole one direction, drop a connection or refuse new ones.

  Peers started with `peer_args/0` among their `:args` use `Drove.Test.WireEpmd` as their
  `-epmd_module`: when such a peer connects to another peer, it asks this server (on the
  runner, over its own direct connection) for a proxy port for the ordered pair and connects
  there; the proxy connects on to the other peer's real listener (from epmd) and pumps the
  bytes both ways. Connections to and from the runner stay direct, so the runner can always
  drive the peers.

  Faults are set per direction: `set(a, b, opts)` acts on the bytes `a` sends to `b`, on
  every connection between them (whichever side opened it) and on later ones:

    * `latency: ms` - each chunk is delivered `ms` after it was read (order kept)
    * `rate: bytes_per_s` - the direction's throughput is limited (`nil`: no limit)
    * `mode: :pass` - forward (the default)
    * `mode: :stall` - stop reading from `a`'s socket, which stays open: `a`'s kernel
      buffers and then its distribution buffer fill, and its senders see `busy_dist_port`
    * `mode: :blackhole` - read and discard: `b` gets nothing, `a` sees no back-pressure;
      when the mode changes again the connections that lost bytes close (their streams are
      broken), as a TCP connection whose packets vanish ends when its timers run out
    * `mode: :down` - new connections between the two are closed at once (see `cut/2`)

  `drop/2` closes the current connections between two nodes (new ones are let through
  unless a direction is `:down`). Settings live in a public ETS table read by the pumps on
  every chunk; a stalled pump re-reads its setting every few milliseconds.
  """
  use GenServer

  @links :drove_wire_links
  @conns :drove_wire_conns
  @pass %{latency: 0, rate: nil, mode: :pass}

  # ------------------------------------------------------------------ API

  @doc "Starts the proxy server on this node (the runner) unless it runs; returns its pid."
  @spec ensure_started() :: pid()
  def ensure_started do
    case GenServer.start(__MODULE__, nil, name: __MODULE__) do
      {:ok, pid} -> pid
      {:error, {:already_started, pid}} -> pid
    end
  end

  @doc """
  `erl` arguments that route a peer's connections to other peers through this server:
  `-epmd_module` and the runner's name. So that a stall bites after tens of KiB instead of
  megabytes, they also lower the distribution buffer's busy limit to `busy_kb` KiB (default
  64; the VM's default is 1024) and the kernel buffers of distribution sockets to 16 KiB.
  """
  @spec peer_args(pos_integer()) :: [String.t()]
  def peer_args(busy_kb \\ 64) do
    ensure_started()

    [
      "-epmd_module",
      "Elixir.Drove.Test.WireEpmd",
      "-drove_wire",
      Atom.to_string(node()),
      "+zdbbl",
      Integer.to_string(busy_kb),
      "-kernel",
      "inet_dist_connect_options",
      "[{sndbuf,16384},{recbuf,16384}]",
      "-kernel",
      "inet_dist_listen_options",
      "[{sndbuf,16384},{recbuf,16384}]"
    ]
  end

  @doc "The proxy port for connections from node `from` to node `to` (called by peers)."
  @spec route(node(), node()) :: {:ok, :inet.port_number()} | {:error, term()}
  def route(from, to), do: GenServer.call(__MODULE__, {:route, from, to}, 10_000)

  @doc "Sets the faults of the direction `from` -> `to` (see the module doc); merges."
  @spec set(node(), node(), keyword()) :: :ok
  def set(from, to, opts) do
    link = Map.merge(link(from, to), Map.new(opts))
    :ets.insert(@links, {{from, to}, link})
    :ok
  end

  @doc "Sets the same faults on both directions between `a` and `b`."
  @spec set_both(node(), node(), keyword()) :: :ok
  def set_both(a, b, opts) do
    set(a, b, opts)
    set(b, a, opts)
  end

  @doc """
  Back to plain forwarding in both directions between `a` and `b`. A connection that lost
  bytes to a black hole ends now (see the module doc): this returns once it has closed and
  both nodes have seen it close, so that a heal after it reconnects them instead of finding
  them connected a moment before they are not.
  """
  @spec reset(node(), node()) :: :ok
  def reset(a, b) do
    lost = for k <- [{:lost, a, b}, {:lost, b, a}], {_, pid} <- :ets.lookup(@conns, k), do: pid
    before = if lost != [], do: {dist_ctrl(a, b), dist_ctrl(b, a)}
    :ets.insert(@links, [{{a, b}, @pass}, {{b, a}, @pass}])

    if lost != [] do
      Enum.each(Enum.uniq(lost), &await_exit/1)
      :ets.delete(@conns, {:lost, a, b})
      :ets.delete(@conns, {:lost, b, a})
      await_seen_closed(a, b, before, 200)
    end

    :ok
  end

  defp await_exit(pid) do
    ref = Process.monitor(pid)

    receive do
      {:DOWN, ^ref, :process, ^pid, _} -> :ok
    after
      10_000 -> Process.demonitor(ref, [:flush])
    end
  end

  # each node's distribution controller for the other is gone or another one (a new
  # connection), polled every 50 ms up to `tries` times
  defp await_seen_closed(a, b, {ca, cb} = before, tries) do
    closed? = fn n, other, old -> old == nil or dist_ctrl(n, other) != old end

    cond do
      closed?.(a, b, ca) and closed?.(b, a, cb) -> :ok
      tries == 0 -> :ok
      true -> Process.sleep(50) && await_seen_closed(a, b, before, tries - 1)
    end
  end

  defp dist_ctrl(node, other) do
    case List.keyfind(:erpc.call(node, :erlang, :system_info, [:dist_ctrl], 5_000), other, 0) do
      {_, ctrl} -> ctrl
      nil -> nil
    end
  catch
    # the node is down: nothing of it to wait for
    _, _ -> nil
  end

  @doc "Plain forwarding everywhere."
  @spec reset_all() :: :ok
  def reset_all do
    :ets.delete_all_objects(@links)
    :ok
  end

  @doc "The faults of the direction `from` -> `to`."
  @spec link(node(), node()) :: map()
  def link(from, to) do
    case :ets.lookup(@links, {from, to}) do
      [{_, l}] -> l
      [] -> @pass
    end
  end

  @doc "Closes every open connection between `a` and `b` (both sides see it go down)."
  @spec drop(node(), node()) :: :ok
  def drop(a, b) do
    for {_, pid} <- :ets.lookup(@conns, {a, b}) do
      Process.exit(pid, :kill)
      :ets.delete_object(@conns, {{a, b}, pid})
      :ets.delete_object(@conns, {{b, a}, pid})
    end

    :ok
  end

  @doc "Refuses new connections between `a` and `b` and drops the open ones; undo with reset/2."
  @spec cut(node(), node()) :: :ok
  def cut(a, b) do
    set_both(a, b, mode: :down)
    drop(a, b)
  end

  @doc "Number of open proxied connections between `a` and `b`."
  @spec connections(node(), node()) :: non_neg_integer()
  def connections(a, b), do: Enum.count(:ets.lookup(@conns, {a, b}), &Process.alive?(elem(&1, 1)))

  # ------------------------------------------------------------------ server

  @impl true
  def init(nil) do
    :ets.new(@links, [:named_table, :public, :set, read_concurrency: true])
    :ets.new(@conns, [:named_table, :public, :bag])
    {:ok, %{listeners: %{}}}
  end

  @impl true
  def handle_call({:route, from, to}, _from, s) do
    case Map.fetch(s.listeners, {from, to}) do
      {:ok, port} ->
        {:reply, {:ok, port}, s}

      :error ->
        {:ok, lsock} =
          :gen_tcp.listen(0, [
            :binary,
            packet: :raw,
            active: false,
            reuseaddr: true,
            ip: {127, 0, 0, 1},
            backlog: 64
          ])

        {:ok, port} = :inet.port(lsock)
        acceptor = spawn(fn -> accept_loop(lsock, from, to) end)
        :ok = :gen_tcp.controlling_process(lsock, acceptor)
        {:reply, {:ok, port}, %{s | listeners: Map.put(s.listeners, {from, to}, port)}}
    end
  end

  defp accept_loop(lsock, from, to) do
    case :gen_tcp.accept(lsock) do
      {:ok, sock} ->
        pid = spawn(fn -> connection(from, to) end)
        :ok = :gen_tcp.controlling_process(sock, pid)
        send(pid, {:socket, sock})
        accept_loop(lsock, from, to)

      {:error, _} ->
        :ok
    end
  end

  # One proxied connection: owns both sockets (they close when it exits) and links the four
  # pump processes, so that the end of any of them ends the connection.
  defp connection(from, to) do
    sock = receive(do: ({:socket, s} -> s))
    Process.flag(:trap_exit, true)

    with true <- link(from, to).mode != :down and link(to, from).mode != :down,
         {:ok, port} <- real_port(to),
         {:ok, out} <-
           :gen_tcp.connect({127, 0, 0, 1}, port, [:binary, packet: :raw, active: false], 5_000) do
      # small kernel buffers on the proxy's side: a stall reaches the sender sooner
      :ok = :inet.setopts(sock, recbuf: 8192, sndbuf: 8192)
      :ok = :inet.setopts(out, recbuf: 8192, sndbuf: 8192)
      :ets.insert(@conns, [{{from, to}, self()}, {{to, from}, self()}])
      pump(sock, out, from, to)
      pump(out, sock, to, from)

      receive do
        {:EXIT, _, _} -> :ok
      end

      :ets.delete_object(@conns, {{from, to}, self()})
      :ets.delete_object(@conns, {{to, from}, self()})
    end

    :gen_tcp.close(sock)
  end

  defp real_port(node) do
    [name, host] = node |> Atom.to_string() |> String.split("@", parts: 2)
    {:ok, ip} = :inet.parse_address(String.to_charlist(host))

    case :erl_epmd.port_please(String.to_charlist(name), ip) do
      {:port, port, _version} -> {:ok, port}
      other -> {:error, other}
    end
  end

  # The bytes src's node sends to dst's node: a reader that honours stalls and black holes,
  # and a writer that honours latency and rate.
  defp pump(src, dst, from, to) do
    conn = self()
    writer = spawn_link(fn -> write_loop(dst, {from, to}, 0) end)
    spawn_link(fn -> read_loop(src, {from, to}, writer, conn) end)
  end

  defp read_loop(src, key, writer, conn) do
    case :gen_tcp.recv(src, 0) do
      {:ok, data} ->
        case await_flow(key) do
          :blackhole ->
            # this connection ends with the black hole: reset/2 waits for it
            {from, to} = key
            :ets.insert(@conns, {{:lost, from, to}, conn})
            blackhole(src, key)

          _ ->
            send(writer, {:data, System.monotonic_time(:millisecond), data})
            read_loop(src, key, writer, conn)
        end

      {:error, reason} ->
        exit(reason)
    end
  end

  # Discards what comes while the direction is a black hole. Bytes were lost from the middle
  # of the stream, so the connection cannot go on: once the mode changes it ends (as a TCP
  # connection whose packets vanish ends when the sender's timers run out).
  defp blackhole(src, {from, to} = key) do
    if link(from, to).mode == :blackhole do
      case :gen_tcp.recv(src, 0, 20) do
        {:ok, _} -> blackhole(src, key)
        {:error, :timeout} -> blackhole(src, key)
        {:error, reason} -> exit(reason)
      end
    else
      exit(:blackholed)
    end
  end

  # While the direction is stalled nothing more is read: the sender's buffers fill.
  defp await_flow({from, to} = key) do
    case link(from, to).mode do
      :stall ->
        Process.sleep(5)
        await_flow(key)

      mode ->
        mode
    end
  end

  defp write_loop(dst, {from, to} = key, debt_us) do
    receive do
      {:data, t, data} ->
        l = link(from, to)
        wait = t + l.latency - System.monotonic_time(:millisecond)
        if wait > 0, do: Process.sleep(wait)
        # a closed socket ends this pump and so the connection
        with {:error, reason} <- :gen_tcp.send(dst, data), do: exit(reason)

        case l.rate do
          nil ->
            write_loop(dst, key, 0)

          rate ->
            # sleep off whole milliseconds of the time these bytes take at the rate
            debt_us = debt_us + div(byte_size(data) * 1_000_000, rate)
            ms = div(debt_us, 1000)
            if ms > 0, do: Process.sleep(ms)
            write_loop(dst, key, debt_us - ms * 1000)
        end
    end
  end
end

defmodule Drove.Test.WireEpmd do
  @moduledoc """
  The `-epmd_module` of peers started with `Drove.Test.Wire.peer_args/0`: epmd as usual,
  except that the address of another peer is a proxy port of `Drove.Test.Wire` on the
  runner (named by the `-drove_wire` argument). The runner itself is reached directly.
  """

  @doc false
  def start_link, do: :erl_epmd.start_link()
  @doc false
  def register_node(name, port), do: :erl_epmd.register_node(name, port)
  @doc false
  def register_node(name, port, family), do: :erl_epmd.register_node(name, port, family)
  @doc false
  def port_please(name, host), do: :erl_epmd.port_please(name, host)
  @doc false
  def port_please(name, host, timeout), do: :erl_epmd.port_please(name, host, timeout)
  @doc false
  def listen_port_please(name, host), do: :erl_epmd.listen_port_please(name, host)
  @doc false
  def names, do: :erl_epmd.names()
  @doc false
  def names(host), do: :erl_epmd.names(host)

  @doc "Where to connect for node `name`@`host`: `{:ok, ip}` (epmd) or a proxy port."
  @spec address_please(charlist(), charlist(), :inet.address_family()) ::
          {:ok, :inet.ip_address()} | {:ok, :inet.ip_address(), :inet.port_number(), 6} | term()
  def address_please(name, host, family) do
    target = :"#{name}@#{host}"

    case controller() do
      ctl when ctl in [nil, target] ->
        :inet.getaddr(host, family)

      ctl ->
        case :erpc.call(ctl, Drove.Test.Wire, :route, [node(), target], 10_000) do
          {:ok, port} -> {:ok, {127, 0, 0, 1}, port, 6}
          other -> other
        end
    end
  end

  defp controller do
    case :init.get_argument(:drove_wire) do
      {:ok, [[ctl | _] | _]} -> List.to_atom(ctl)
      _ -> nil
    end
  end
end

defmodule Drove.Test.WirePeer do
  @moduledoc false
  # Runs ON peer nodes for the wire tests.

  @doc """
  Spawns a process that registers `{prefix, i}` for every i of `range` with a `bytes`-long
  value, then stays; returns how many registrations succeeded.
  """
  @spec hold(atom(), term(), Range.t(), non_neg_integer()) :: non_neg_integer()
  def hold(registry, prefix, range, bytes) do
    parent = self()
    ref = make_ref()

    spawn(fn ->
      value = :binary.copy(<<7>>, bytes)

      ok =
        Enum.count(
          range,
          &match?({:ok, _}, Drove.Registry.register(registry, {prefix, &1}, value))
        )

      send(parent, {ref, ok})
      receive do: (:stop -> :ok)
    end)

    receive do
      {^ref, ok} -> ok
    end
  end
end

defmodule Drove.Test.WireSupPeer do
  @moduledoc false
  # Runs ON peer nodes for the wire tests.

  @doc """
  Calls `Drove.DynamicSupervisor.start_child/2` for a permanent `Drove.Test.Worker` tagged
  `prefix_i` for every i of `range`, each from a process of its own, all at once; each
  reports `{:child_started, tag, node}` (the node it runs on) to `report_to` when its call
  returns `{:ok, pid}`, or `{:child_failed, tag, result}`.
  """
  @spec start_children(atom(), String.t(), Range.t(), pid()) :: :ok
  def start_children(sup, prefix, range, report_to) do
    for i <- range do
      tag = :"#{prefix}_#{i}"

      spawn(fn ->
        case Drove.DynamicSupervisor.start_child(sup, {Drove.Test.Worker, {tag, :permanent}}) do
          {:ok, pid} -> send(report_to, {:child_started, tag, node(pid)})
          other -> send(report_to, {:child_failed, tag, other})
        end
      end)
    end

    :ok
  end
end
