defmodule Drove.TestCluster do
  @moduledoc """
  Multi-node test helper: starts REAL Erlang nodes ("peers") with OTP's
  `:peer` module and lets a test split and heal the cluster.

  ## Topology

    * The test runner is distributed (`test/test_helper.exs` starts it as
      `drove_test@127.0.0.1` with long names) and is connected to every peer
      at all times. It drives the peers over normal Erlang distribution
      (`:erpc`). Every peer's `Node.list/0` therefore also contains the
      runner.
    * Peers are named `:"<prefix>N_<os pid>@127.0.0.1"` (`N` is unique
      within the test run, the runner's OS pid keeps concurrent test runs on
      one machine apart), share the runner's cookie and code path and bind their
      distribution listener to 127.0.0.1 (epmd must be reachable on
      loopback).
    * `partition/1` only ever cuts links *between peers*. Erlang
      distribution never forwards messages through a third node, so the
      runner cannot bridge two partitions.
    * Peers run with `-kernel prevent_overlapping_partitions false` and, by
      default, `-kernel connect_all false`, so `:global` neither re-meshes
      nodes behind the test's back nor joins peers of different tests into
      one cluster. Pass `connect_all: true` if the code under test needs
      `:global` name registration across peers.

  ## Code on peers

  Peers get the runner's code path (`-pa` for every entry of
  `:code.get_path/0` except `.` and the OTP libraries, which peers have
  anyway), so everything compiled into `_build/test` (`lib/`
  and `test/support/`) can run there. Test modules (`test/**/*_test.exs`)
  are compiled in memory on the runner only and are NOT available on peers:
  an anonymous function written inside a test module cannot run on a peer.
  Put helper code that must run on peers into a module under
  `test/support/` and call it with `rpc/5` (MFA) or pass a fun defined in
  such a module to `eval/3`.

  ## Lifetime

  Peers are started unlinked and recorded in a registry process. When a
  node is started from a test process (a `test` body, `setup` or
  `setup_all`), an `ExUnit.Callbacks.on_exit/1` callback stops it when that
  test (or module, for `setup_all`) finishes. `stop_all/0` stops every
  node still registered. A peer also halts by itself when the runner VM
  goes away.

  ## Options

  Accepted by `start_nodes/2`, `start_node/2` and `restart/2`:

    * `:prefix` - node name prefix for generated names (default
      `"drove_peer"`)
    * `:apps` - applications started on every peer with
      `Application.ensure_all_started/1`, after the node has been connected
      to its cluster (default `[:drove]`). Failing to start one raises.
    * `:copy_env` - copy the runner's application environment of `:logger`
      and of every app in `:apps` to the peer before starting them, so that
      `config/*.exs` applies on peers too (default `true`)
    * `:env` - extra application environment applied on the peer after the
      copied one, as `[app: [key: value]]` (default `[]`)
    * `:auto_connect` - when `false`, the peer runs with
      `dist_auto_connect` set to `:never`: it only connects to nodes it is
      explicitly told to (default `true`). It is set right after boot
      because the peer's boot handshake with the runner needs auto-connect.
      Independently of this option, `partition/1` switches auto-connect off
      on the partitioned peers until `heal/1`.
    * `:connect_all` - value of the kernel `connect_all` parameter (default
      `false`, see above)
    * `:args` - extra command line arguments for `erl` (strings or
      charlists)
    * `:connect` - nodes the new node is connected to (start_node/2
      default `[]`; restart/2 default: the live nodes of the group it was
      originally started with)
    * `:boot_timeout` - ms to wait for a peer to boot (default `15_000`)
    * `:on_exit` - register the cleanup callback when called from a test
      process (default `true`)
  """

  alias Drove.TestCluster.Registry

  @host ~c"127.0.0.1"
  @default_prefix "drove_peer"
  @default_timeout 10_000
  @default_opts [
    prefix: @default_prefix,
    apps: [:drove],
    copy_env: true,
    env: [],
    auto_connect: true,
    connect_all: false,
    args: [],
    boot_timeout: 15_000,
    on_exit: true
  ]

  @typedoc "Options, see the module documentation."
  @type opts :: keyword()

  # ---------------------------------------------------------------------------
  # Starting nodes

  @doc """
  Makes the calling node a distributed node named `name`@127.0.0.1 (or, when that name is
  taken, e.g. by another checkout's suite, a unique variant of it), listening on loopback
  only, with the cookie `:drove`; starts epmd on loopback first if needed. A no-op when the
  node is already distributed (`make test-elixir` starts epmd itself).
  """
  @spec ensure_distributed!(atom()) :: :ok
  def ensure_distributed!(name) when is_atom(name) do
    unless Node.alive?() do
      epmd = System.find_executable("epmd") || "epmd"
      System.cmd(epmd, ["-daemon"], env: [{"ERL_EPMD_ADDRESS", "127.0.0.1"}])

      # `epmd -daemon` returns before epmd accepts connections: wait for it (up to 5 s)
      Enum.reduce_while(1..100, nil, fn _, _ ->
        case System.cmd(epmd, ["-names"], stderr_to_stdout: true) do
          {_, 0} -> {:halt, :ok}
          _ -> Process.sleep(50) && {:cont, nil}
        end
      end)

      Application.put_env(:kernel, :inet_dist_use_interface, {127, 0, 0, 1})

      started =
        with {:error, _} <- :net_kernel.start([:"#{name}@127.0.0.1", :longnames]) do
          unique = :"#{name}_#{System.unique_integer([:positive])}_#{:os.getpid()}@127.0.0.1"
          :net_kernel.start([unique, :longnames])
        end

      with {:error, reason} <- started do
        raise "could not start distribution (is epmd running?): #{inspect(reason)}"
      end
    end

    Node.set_cookie(:drove)
    :ok
  end

  @doc """
  Starts `n` peer nodes in parallel, connects them in a full mesh (the
  runner is connected to all of them too), starts the `:apps` on them and
  returns their node names in start order.

  Raises if any node fails to boot, connect or start its applications.
  """
  @spec start_nodes(pos_integer(), opts()) :: [node()]
  def start_nodes(n, opts \\ []) when is_integer(n) and n > 0 and is_list(opts) do
    opts = Keyword.merge(@default_opts, opts)
    names = for _ <- 1..n, do: unique_name(opts[:prefix])
    nodes = Enum.map(names, &to_node/1)
    maybe_register_cleanup(nodes, opts)

    boot_results =
      nodes
      |> Task.async_stream(&safe_boot(&1, opts), timeout: :infinity)
      |> Enum.map(fn {:ok, result} -> result end)

    case for({:error, node, reason} <- boot_results, do: {node, reason}) do
      [] ->
        :ok

      failed ->
        raise "Drove.TestCluster: failed to boot " <>
                Enum.map_join(failed, "\n", fn {node, reason} -> "#{node}:\n#{reason}" end)
    end

    Enum.each(nodes, &Registry.update(&1, fn entry -> %{entry | group: nodes} end))
    connect_mesh(nodes)

    nodes
    |> Task.async_stream(&safe(fn -> start_apps(&1, opts[:apps]) end), timeout: :infinity)
    |> Enum.each(fn
      {:ok, :ok} -> :ok
      {:ok, {:error, kind, reason, stack}} -> :erlang.raise(kind, reason, stack)
    end)

    nodes
  end

  @doc """
  Starts one peer node named `name` and returns its node name.

  `name` is a short name (`:foo` or `"foo"`, the host is always
  `127.0.0.1`), a full node name (`:"foo@127.0.0.1"`), or `nil` for a
  generated unique name. A node that was killed or stopped can be started
  again under the same name (see also `restart/2`). The new node is
  connected to the nodes in the `:connect` option (default `[]`) before the
  `:apps` are started.
  """
  @spec start_node(atom() | String.t() | nil, opts()) :: node()
  def start_node(name, opts \\ []) when is_list(opts) do
    opts = Keyword.merge(@default_opts, opts)
    node = if name, do: to_node(name), else: to_node(unique_name(opts[:prefix]))
    maybe_register_cleanup([node], opts)
    do_start_node(node, opts, Keyword.get(opts, :connect, []))
  end

  @doc """
  Starts a node that was killed or stopped again, under the same name and
  with the options it was first started with (`opts` override them).

  By default it is connected to the live nodes of the group it was
  originally started with (`start_nodes/2`) or to its original `:connect`
  list; pass `connect: nodes` to choose. During a partition, pass the nodes
  of the node's own side, or the restarted node bridges the partition.
  Returns the node name.
  """
  @spec restart(node(), opts()) :: node()
  def restart(node, opts \\ []) when is_atom(node) and is_list(opts) do
    entry = Registry.get(node) || raise ArgumentError, "unknown node #{inspect(node)}"

    if alive?(node) do
      raise ArgumentError, "node #{inspect(node)} is still running; kill/1 or stop/1 it first"
    end

    opts = Keyword.merge(entry.opts, opts)

    connect =
      Keyword.get_lazy(opts, :connect, fn ->
        Enum.filter(entry.group, &(&1 != node and alive?(&1)))
      end)

    do_start_node(node, opts, connect)
  end

  defp do_start_node(node, opts, connect) do
    if alive?(node), do: raise(ArgumentError, "node #{inspect(node)} is already running")

    case safe_boot(node, opts) do
      {:ok, ^node} ->
        :ok

      {:error, ^node, reason} ->
        raise "Drove.TestCluster: failed to boot #{node}:\n#{reason}"
    end

    connect = Enum.reject(connect, &(&1 == node))
    Enum.each(connect, &connect_pair(node, &1))

    await(
      fn ->
        node in Node.list() and
          Enum.all?(connect, &(connected?(node, &1) and connected?(&1, node)))
      end,
      @default_timeout,
      "#{node} connected to #{inspect(connect)}"
    )

    start_apps(node, opts[:apps])
    node
  end

  # ---------------------------------------------------------------------------
  # Stopping nodes

  @doc """
  Kills `node` abruptly (`:erlang.halt/2` without flushing, like a crash:
  no application is stopped) and waits until it is gone from the runner's
  `Node.list/0` and its name is free in epmd. The node stays registered and
  can be brought back with `restart/2`.
  """
  @spec kill(node()) :: :ok
  def kill(node) when is_atom(node) do
    entry = fetch_alive!(node)
    :erpc.cast(node, :erlang, :halt, [137, [flush: false]])
    await_down(node, entry.peer, @default_timeout)
  end

  @doc """
  Stops `node` gracefully with `:init.stop/0` (applications are stopped in
  order) and waits until it is gone. This takes about a second: OTP's
  `user_sup` sleeps 1 s while shutting down. Falls back to `:peer.stop/1` when the
  node has not shut down within `timeout` ms. The node stays registered and
  can be brought back with `restart/2`.
  """
  @spec stop(node(), timeout()) :: :ok
  def stop(node, timeout \\ @default_timeout) when is_atom(node) do
    entry = fetch_alive!(node)
    :erpc.cast(node, :init, :stop, [])

    case poll(fn -> node not in Node.list() end, timeout, 10) do
      {:ok, _} -> :ok
      {:timeout, _} -> stop_peer(entry.peer)
    end

    await_down(node, entry.peer, @default_timeout)
  end

  @doc """
  Stops every node started by this module that is still registered (used
  as the `on_exit` cleanup; also handy outside ExUnit). Nodes are halted,
  not shut down gracefully. Returns the nodes that were stopped.
  """
  @spec stop_all() :: [node()]
  def stop_all do
    nodes = Registry.nodes()
    cleanup(nodes)
    nodes
  end

  # ---------------------------------------------------------------------------
  # Partitions

  @doc """
  Splits the cluster: every node in one group is disconnected from every
  node in the other groups, e.g. `partition([[a, b], [c]])`.

  Auto-connect is switched off on all listed nodes first, so the split
  holds until `heal/1`: sending to, calling or pinging a node on the other
  side fails instead of reconnecting. Links inside a group, and every
  peer's link to the runner, stay up. Returns once each cross pair has
  disappeared from both nodes' `Node.list/0`.
  """
  @spec partition([[node()] | node()]) :: :ok
  def partition(groups) when is_list(groups) do
    groups = Enum.map(groups, &List.wrap/1)
    nodes = List.flatten(groups)

    if Enum.uniq(nodes) != nodes do
      raise ArgumentError, "a node appears in more than one group: #{inspect(groups)}"
    end

    Enum.each(nodes, &fetch_alive!/1)
    Enum.each(nodes, &set_auto_connect(&1, false))

    cross =
      for {g1, i} <- Enum.with_index(groups),
          {g2, j} <- Enum.with_index(groups),
          i < j,
          a <- g1,
          b <- g2,
          do: {a, b}

    Enum.each(cross, fn {a, b} -> rpc(a, :erlang, :disconnect_node, [b]) end)

    await(
      fn -> Enum.all?(cross, fn {a, b} -> not connected?(a, b) and not connected?(b, a) end) end,
      @default_timeout,
      "partition #{inspect(groups)}"
    )

    :ok
  end

  @doc """
  Heals a partition: restores each node's auto-connect setting (see the
  `:auto_connect` option), explicitly connects every pair of `nodes` and
  waits until they form a full mesh. `nodes` may also be given as groups,
  e.g. the same list passed to `partition/1`.
  """
  @spec heal([[node()] | node()]) :: :ok
  def heal(nodes) when is_list(nodes) do
    nodes = nodes |> List.flatten() |> Enum.uniq()
    Enum.each(nodes, &fetch_alive!/1)

    Enum.each(nodes, fn node -> set_auto_connect(node, Registry.get(node).opts[:auto_connect]) end)

    connect_mesh(nodes)
  end

  # ---------------------------------------------------------------------------
  # Remote execution

  @doc """
  Calls `apply(module, fun, args)` on `node` via `:erpc.call/5` and returns
  the result. Exceptions, exits and throws on the peer are re-raised in the
  caller, as `:erpc` does. `timeout` is in ms (default 10 s).
  """
  @spec rpc(node(), module(), atom(), [term()], timeout()) :: term()
  def rpc(node, module, fun, args, timeout \\ @default_timeout)
      when is_atom(node) and is_atom(module) and is_atom(fun) and is_list(args) do
    :erpc.call(node, module, fun, args, timeout)
  end

  @doc """
  Runs a zero-arity `fun` on `node` and returns its result.

  The module that defines `fun` must be loadable on the peer: funs written
  in test modules are not (those modules exist only in the runner's
  memory), and raise `ArgumentError` here. Define such helpers in a module
  under `test/support/` or prefer `rpc/5`.
  """
  @spec eval(node(), (() -> term()), timeout()) :: term()
  def eval(node, fun, timeout \\ @default_timeout) when is_atom(node) and is_function(fun, 0) do
    {:module, module} = Function.info(fun, :module)

    case rpc(node, :code, :ensure_loaded, [module]) do
      {:module, ^module} ->
        :erpc.call(node, fun, timeout)

      {:error, reason} ->
        raise ArgumentError,
              "cannot run #{inspect(fun)} on #{node}: module #{inspect(module)} is not " <>
                "available there (#{inspect(reason)}). Test modules are not loaded on peers; " <>
                "move the code into a module under test/support/ or use rpc/5"
    end
  end

  @doc """
  Spawns a process on `node`, registered locally there as `name`, that
  forwards every message it receives to `to` (default: the caller) as
  `{:forwarded, name, node, message}`. Useful to observe which messages
  cross (or do not cross) a partition. Returns the process' pid.
  """
  @spec spawn_forwarder(node(), atom(), pid()) :: pid()
  def spawn_forwarder(node, name, to \\ self()) when is_atom(name) and is_pid(to) do
    parent = self()
    ref = make_ref()
    pid = Node.spawn(node, __MODULE__, :__forwarder__, [name, to, parent, ref])

    receive do
      {^ref, :registered} ->
        pid

      {^ref, {:error, reason}} ->
        raise ArgumentError, "cannot register #{inspect(name)} on #{node}: #{reason}"
    after
      @default_timeout -> raise "spawn_forwarder: no answer from #{node}"
    end
  end

  @doc false
  @spec __forwarder__(atom(), pid(), pid(), reference()) :: :ok | no_return()
  def __forwarder__(name, to, parent, ref) do
    try do
      Process.register(self(), name)
    rescue
      ArgumentError ->
        send(parent, {ref, {:error, "the name is already in use"}})
        exit(:normal)
    end

    send(parent, {ref, :registered})
    forward_loop(name, to)
  end

  defp forward_loop(name, to) do
    receive do
      message ->
        send(to, {:forwarded, name, node(), message})
        forward_loop(name, to)
    end
  end

  # ---------------------------------------------------------------------------
  # Introspection and waiting

  @doc "Nodes started by this module that are currently running."
  @spec nodes() :: [node()]
  def nodes, do: Enum.filter(Registry.nodes(), &alive?/1)

  @doc """
  Returns `true` when every node in `nodes` is connected to every other one
  and to the runner.
  """
  @spec mesh?([node()]) :: boolean()
  def mesh?(nodes) when is_list(nodes) do
    Enum.all?(nodes, fn node ->
      node in Node.list() and
        Enum.all?(nodes, fn other -> other == node or connected?(node, other) end)
    end)
  end

  @doc """
  Polls `fun` every `interval_ms` until it returns a truthy value, and
  returns that value. Flunks the test (raises `ExUnit.AssertionError`) when
  `timeout_ms` passes first, reporting the last value or exception. The default, 30 s, is
  a bound for a loaded machine, not a speed asked for: only a failing wait takes it.

  Exceptions and exits raised by `fun` (e.g. a failing `assert`, or an
  `rpc/5` to a node that is still booting) count as "not yet" and are
  retried.
  """
  @spec wait_until((() -> term()), non_neg_integer(), pos_integer()) :: term()
  def wait_until(fun, timeout_ms \\ 30_000, interval_ms \\ 10)
      when is_function(fun, 0) and is_integer(timeout_ms) and timeout_ms >= 0 and
             is_integer(interval_ms) and interval_ms > 0 do
    await(fun, timeout_ms, "condition #{inspect(fun)}", interval_ms)
  end

  @doc """
  A positive barrier for "nothing happens" checks on replicated instances: waits until each
  node in `nodes` has completed `rounds` more anti-entropy rounds with each neighbour it
  has up than when called. `info` returns the instance's info map on a node (with the
  replicator's `:rounds_done` and `:neighbours_up`), e.g.
  `&C.rpc(&1, Drove.Registry, :info, [reg])`. Every periodic decision of an instance runs
  on its sync tick, and rounds start on ticks: when this returns, every node has run
  `rounds` ticks, and exchanged its state with every neighbour, after the call. Check the
  condition after it (or with `consistently_through_rounds/4`). Returns `:ok`.
  """
  @spec await_rounds([node()], (node() -> map()), pos_integer(), non_neg_integer()) :: :ok
  def await_rounds(nodes, info, rounds \\ 2, timeout_ms \\ 60_000)
      when is_list(nodes) and is_function(info, 1) and is_integer(rounds) and rounds > 0 do
    base = Map.new(nodes, &{&1, info.(&1).rounds_done})

    wait_until(
      fn ->
        Enum.all?(nodes, fn n ->
          i = info.(n)
          i.rounds_done >= base[n] + rounds * max(1, length(i.neighbours_up))
        end)
      end,
      timeout_ms,
      20
    )

    :ok
  end

  @doc """
  `fun` holds at every check until every node has completed `rounds` anti-entropy rounds
  after the call (see `await_rounds/4`), and once more after that: the positive form of
  "nothing happens over a sync round", however slow the machine. Flunks at the first
  check where `fun` returns a falsy value or raises. Returns `:ok`.
  """
  @spec consistently_through_rounds((() -> term()), [node()], (node() -> map()), pos_integer()) ::
          :ok
  def consistently_through_rounds(fun, nodes, info, rounds \\ 2) do
    base = Map.new(nodes, &{&1, info.(&1).rounds_done})

    done? = fn ->
      Enum.all?(nodes, fn n ->
        i = info.(n)
        i.rounds_done >= base[n] + rounds * max(1, length(i.neighbours_up))
      end)
    end

    deadline = now() + 60_000
    through_rounds(fun, done?, deadline)
  end

  defp through_rounds(fun, done?, deadline) do
    # the rounds are read before the condition: when they are complete, the condition is
    # checked once more after them
    finished = done?.()

    case attempt(fun) do
      {:value, v} when v not in [nil, false] ->
        cond do
          finished ->
            :ok

          now() > deadline ->
            ExUnit.Assertions.flunk("consistently_through_rounds: the rounds did not complete")

          true ->
            Process.sleep(20)
            through_rounds(fun, done?, deadline)
        end

      other ->
        ExUnit.Assertions.flunk(
          "consistently_through_rounds: condition #{inspect(fun)} stopped holding\n" <>
            describe(other)
        )
    end
  end

  @doc """
  The negative counterpart of `wait_until/3`: checks `fun` every
  `interval_ms` for `duration_ms` and flunks as soon as it returns a falsy
  value or raises. Use it to assert that something does NOT happen (e.g. a
  partition stays split). Returns `:ok`.
  """
  @spec consistently((() -> term()), non_neg_integer(), pos_integer()) :: :ok
  def consistently(fun, duration_ms \\ 200, interval_ms \\ 20)
      when is_function(fun, 0) and is_integer(duration_ms) and duration_ms >= 0 and
             is_integer(interval_ms) and interval_ms > 0 do
    deadline = now() + duration_ms
    do_consistently(fun, deadline, interval_ms, duration_ms)
  end

  defp do_consistently(fun, deadline, interval, duration) do
    case attempt(fun) do
      {:value, value} when value not in [nil, false] ->
        remaining = deadline - now()

        if remaining <= 0 do
          :ok
        else
          Process.sleep(min(interval, remaining))
          do_consistently(fun, deadline, interval, duration)
        end

      other ->
        ExUnit.Assertions.flunk(
          "consistently: condition #{inspect(fun)} stopped holding within #{duration} ms\n" <>
            describe(other)
        )
    end
  end

  # ---------------------------------------------------------------------------
  # Internals

  # N is unique within this VM; the runner's OS pid keeps two test runs on
  # one machine (sharing epmd) apart.
  defp unique_name(prefix),
    do: "#{prefix}#{System.unique_integer([:positive, :monotonic])}_#{:os.getpid()}"

  defp to_node(name) when is_binary(name) do
    if String.contains?(name, "@"),
      do: String.to_atom(name),
      else: String.to_atom("#{name}@#{@host}")
  end

  defp to_node(name) when is_atom(name), do: name |> Atom.to_string() |> to_node()

  defp short_name(node), do: node |> Atom.to_string() |> String.split("@") |> hd()

  defp alive?(node) do
    case Registry.get(node) do
      %{peer: pid} when is_pid(pid) -> Process.alive?(pid) and node in Node.list()
      _ -> false
    end
  end

  defp fetch_alive!(node) do
    case Registry.get(node) do
      nil ->
        raise ArgumentError,
              "unknown node #{inspect(node)} (not started by #{inspect(__MODULE__)})"

      %{peer: pid} = entry when is_pid(pid) ->
        entry

      _ ->
        raise ArgumentError, "node #{inspect(node)} is not running"
    end
  end

  defp connected?(node, other), do: other in rpc(node, Node, :list, [])

  defp maybe_register_cleanup(nodes, opts) do
    if opts[:on_exit] do
      try do
        ExUnit.Callbacks.on_exit(fn -> cleanup(nodes) end)
      rescue
        # Not called from a test process: stop_all/0 or VM exit cleans up.
        ArgumentError -> :ok
      end
    end

    :ok
  end

  defp cleanup(nodes) do
    nodes
    |> Task.async_stream(
      fn node ->
        case Registry.delete(node) do
          %{peer: pid} when is_pid(pid) -> stop_peer(pid)
          _ -> :ok
        end
      end,
      timeout: :infinity
    )
    |> Stream.run()
  end

  defp stop_peer(pid) do
    :peer.stop(pid)
  catch
    :exit, _ -> :ok
  end

  # Boots the node and prepares it (auto-connect, app env); never raises.
  defp safe_boot(node, opts) do
    case safe(fn -> boot(node, opts) end) do
      :ok -> {:ok, node}
      {:error, kind, reason, stack} -> {:error, node, Exception.format(kind, reason, stack)}
    end
  end

  # Runs fun (which returns :ok); returns the failure instead of raising, so
  # that a failure in a parallel task does not crash the caller with an exit.
  defp safe(fun) do
    fun.()
  catch
    kind, reason -> {:error, kind, reason, __STACKTRACE__}
  end

  defp boot(node, opts) do
    args = build_args(opts)

    peer_opts = %{
      name: String.to_charlist(short_name(node)),
      host: @host,
      longnames: true,
      args: args,
      wait_boot: opts[:boot_timeout]
    }

    Registry.put(node, %{
      peer: nil,
      opts: Keyword.delete(opts, :connect),
      group: (Registry.get(node) || %{group: Keyword.get(opts, :connect, [])}).group
    })

    # A previous incarnation with this name may still be registered in
    # epmd for a moment after it died (e.g. when it halted by itself).
    await_name_free(node, opts[:boot_timeout])

    pid =
      case :peer.start(peer_opts) do
        {:ok, pid, ^node} -> pid
        {:error, reason} -> raise "peer failed to boot: #{inspect(reason)}"
      end

    Registry.update(node, &%{&1 | peer: pid})
    unless opts[:auto_connect], do: set_auto_connect(node, false)
    configure_env(node, opts)
  end

  defp build_args(opts) do
    otp_lib = :code.lib_dir()

    code_path =
      :code.get_path()
      |> Enum.reject(&(&1 == ~c"." or :lists.prefix(otp_lib, &1)))
      |> Enum.flat_map(&[~c"-pa", &1])

    code_path ++
      [
        ~c"-setcookie",
        Atom.to_charlist(Node.get_cookie()),
        ~c"-kernel",
        ~c"inet_dist_use_interface",
        ~c"{127,0,0,1}",
        ~c"-kernel",
        ~c"prevent_overlapping_partitions",
        ~c"false",
        ~c"-kernel",
        ~c"connect_all",
        if(opts[:connect_all], do: ~c"true", else: ~c"false")
      ] ++ Enum.map(opts[:args], &to_charlist/1)
  end

  defp configure_env(node, opts) do
    copied =
      if opts[:copy_env],
        do: for(app <- [:logger | opts[:apps]], do: {app, Application.get_all_env(app)}),
        else: []

    for {app, env} <- copied ++ opts[:env], env != [] do
      # Load first: loading reads the .app file, which would override
      # values set before it.
      case rpc(node, :application, :load, [app]) do
        :ok -> :ok
        {:error, {:already_loaded, ^app}} -> :ok
        {:error, reason} -> raise "cannot load #{inspect(app)} on #{node}: #{inspect(reason)}"
      end

      Enum.each(env, fn {key, value} -> rpc(node, :application, :set_env, [app, key, value]) end)
    end

    :ok
  end

  defp set_auto_connect(node, true),
    do: rpc(node, :application, :unset_env, [:kernel, :dist_auto_connect])

  defp set_auto_connect(node, false),
    do: rpc(node, :application, :set_env, [:kernel, :dist_auto_connect, :never])

  defp start_apps(node, apps) do
    Enum.each(apps, fn app ->
      case rpc(node, Application, :ensure_all_started, [app], 30_000) do
        {:ok, _} -> :ok
        {:error, reason} -> raise "cannot start #{inspect(app)} on #{node}: #{inspect(reason)}"
      end
    end)
  end

  defp connect_mesh(nodes) do
    for {a, i} <- Enum.with_index(nodes), {b, j} <- Enum.with_index(nodes), i < j do
      connect_pair(a, b)
    end

    # A connection that was up when its pair connected may still be closed after that (by a
    # wire fault's end, say), and with auto-connect off nobody else reconnects it: reconnect
    # what is missing until the mesh holds.
    await(
      fn ->
        for {a, i} <- Enum.with_index(nodes),
            {b, j} <- Enum.with_index(nodes),
            i < j,
            not connected?(a, b),
            do: safe(fn -> rpc(a, :net_kernel, :connect_node, [b]) end)

        mesh?(nodes)
      end,
      @default_timeout,
      "full mesh of #{inspect(nodes)}"
    )

    :ok
  end

  defp connect_pair(a, b) do
    await(
      fn -> rpc(a, :net_kernel, :connect_node, [b]) == true end,
      @default_timeout,
      "#{a} connecting to #{b}"
    )
  end

  defp await_down(node, peer, timeout) do
    ref = Process.monitor(peer)
    await(fn -> node not in Node.list() end, timeout, "#{node} going down")

    receive do
      {:DOWN, ^ref, :process, ^peer, _} -> :ok
    after
      timeout -> ExUnit.Assertions.flunk("peer controller of #{node} did not exit")
    end

    Registry.update(node, &%{&1 | peer: nil})
    await_name_free(node, timeout)
  end

  defp await_name_free(node, timeout) do
    name = String.to_charlist(short_name(node))

    await(
      fn -> not match?({:port, _, _}, :erl_epmd.port_please(name, @host)) end,
      timeout,
      "#{node} to be unregistered from epmd"
    )

    :ok
  end

  defp now, do: System.monotonic_time(:millisecond)

  defp await(fun, timeout, what, interval \\ 10) do
    case poll(fun, timeout, interval) do
      {:ok, value} ->
        value

      {:timeout, last} ->
        ExUnit.Assertions.flunk(
          "timed out after #{timeout} ms waiting for #{what}\n" <> describe(last)
        )
    end
  end

  defp poll(fun, timeout, interval), do: do_poll(fun, now() + timeout, interval)

  defp do_poll(fun, deadline, interval) do
    case attempt(fun) do
      {:value, value} when value not in [nil, false] ->
        {:ok, value}

      other ->
        remaining = deadline - now()

        if remaining <= 0 do
          {:timeout, other}
        else
          Process.sleep(min(interval, remaining))
          do_poll(fun, deadline, interval)
        end
    end
  end

  defp attempt(fun) do
    {:value, fun.()}
  rescue
    e -> {:raised, e, __STACKTRACE__}
  catch
    kind, reason -> {:caught, kind, reason, __STACKTRACE__}
  end

  defp describe({:value, value}), do: "last value: #{inspect(value)}"

  defp describe({:raised, e, stack}),
    do: "last attempt raised:\n" <> Exception.format(:error, e, stack)

  defp describe({:caught, kind, reason, stack}),
    do: "last attempt failed:\n" <> Exception.format(kind, reason, stack)
end

defmodule Drove.TestCluster.Registry do
  @moduledoc false
  # Node name => %{peer: pid | nil, opts: keyword, group: [node]}. An
  # unlinked Agent, so that it outlives the test process that started it.

  @spec ensure_started() :: pid()
  def ensure_started do
    case Process.whereis(__MODULE__) do
      nil ->
        case Agent.start(fn -> %{} end, name: __MODULE__) do
          {:ok, pid} -> pid
          {:error, {:already_started, pid}} -> pid
        end

      pid ->
        pid
    end
  end

  @spec get(node()) :: map() | nil
  def get(node), do: Agent.get(ensure_started(), &Map.get(&1, node))

  @spec put(node(), map()) :: :ok
  def put(node, entry), do: Agent.update(ensure_started(), &Map.put(&1, node, entry))

  @spec update(node(), (map() -> map())) :: :ok
  def update(node, fun), do: Agent.update(ensure_started(), &Map.update!(&1, node, fun))

  @spec delete(node()) :: map() | nil
  def delete(node), do: Agent.get_and_update(ensure_started(), &Map.pop(&1, node))

  @spec nodes() :: [node()]
  def nodes, do: Agent.get(ensure_started(), &Map.keys/1)
end
