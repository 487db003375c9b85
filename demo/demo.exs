# make demo: a local 3-node cluster, replicated through Drove: (1) a Drove.CRDT map,
# (2) a Drove.Registry of 30 named agents, one node leaving gracefully.
# Started by the Makefile as: elixir --name demo@127.0.0.1 --cookie drove -S mix run demo/demo.exs
defmodule Demo do
  @moduledoc false

  # Starts peers demo<i>_<unique>@127.0.0.1 for each i, in parallel, with :drove running.
  def start_nodes(indices) do
    args =
      Enum.flat_map(:code.get_path(), &[~c"-pa", &1]) ++
        [~c"-setcookie", Atom.to_charlist(Node.get_cookie())] ++
        [~c"-kernel", ~c"prevent_overlapping_partitions", ~c"false"]

    indices
    |> Task.async_stream(
      fn i ->
        {:ok, _pid, node} =
          :peer.start(%{
            name: :"demo#{i}_#{System.unique_integer([:positive])}",
            host: ~c"127.0.0.1",
            longnames: true,
            args: args
          })

        {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:drove])
        :erpc.call(node, Code, :compile_string, [remote_src()])
        node
      end,
      timeout: 60_000
    )
    |> Enum.map(fn {:ok, node} -> node end)
  end

  # demo1_1234@127.0.0.1 -> "demo1"
  def short(node), do: node |> Atom.to_string() |> String.split("_") |> hd()

  def say(msg), do: IO.puts("#{clock()}  #{msg}")

  defp clock do
    {{_, _, _}, {h, m, s}} = :calendar.local_time()
    :io_lib.format("~2..0B:~2..0B:~2..0B", [h, m, s]) |> to_string()
  end

  # runs on the peers (compiled there from source below)
  def remote_src do
    ~S"""
    defmodule Demo.Remote do
      def start(name, neighbours) do
        {:ok, _} = GenServer.start(Drove.CRDT, [name: name, neighbours: neighbours], name: name)
        :ok
      end

      def write(name, n) do
        Enum.each(1..n, fn i -> Drove.CRDT.put(name, {:agent, i}, %{node: node(), n: i}) end)
        System.os_time(:microsecond)
      end

      def write_tag(name, tag, n) do
        Enum.each(1..n, fn i -> Drove.CRDT.put(name, {tag, i}, i) end)
      end

      def wait_size(name, n) do
        if Drove.CRDT.info(name).size >= n,
          do: System.os_time(:microsecond),
          else: (Process.sleep(1); wait_size(name, n))
      end

      # The registry runs under the :drove application's supervisor, so that :init.stop
      # stops it gracefully (it then removes its own node's registrations everywhere).
      def start_registry(nodes) do
        members = for n <- nodes, do: {Demo.Registry, n}
        spec = {Drove.Registry, name: Demo.Registry, keys: :unique, members: members}
        {:ok, _} = Supervisor.start_child(Drove.Supervisor, spec)
        :ok
      end

      def start_agents(names), do: Enum.map(names, &Demo.Agent.start/1)

      # the node each agent runs on, as this node's registry sees it (nil: not found)
      def owners(names) do
        for name <- names do
          case Drove.Registry.lookup(Demo.Registry, name) do
            [{pid, _}] -> node(pid)
            [] -> nil
          end
        end
      end

      def wait_count(n) do
        if Drove.Registry.count(Demo.Registry) == n,
          do: System.os_time(:microsecond),
          else: (Process.sleep(1); wait_count(n))
      end
    end

    defmodule Demo.Agent do
      use GenServer

      def start(name),
        do: GenServer.start(__MODULE__, name, name: {:via, Drove.Registry, {Demo.Registry, name}})

      @impl true
      def init(name), do: {:ok, name}

      @impl true
      def handle_call(:hello, _from, name), do: {:reply, "#{name} here, on #{node()}", name}
    end
    """
  end

  def run do
    unless Node.alive?(), do: raise("run me through `make demo` (needs a distributed node)")
    say("starting 3 local nodes on 127.0.0.1 ...")
    nodes = [a, b, c] = start_nodes(1..3)
    say("nodes: #{inspect(nodes)}")
    IO.puts("")
    say("== 1. Drove.CRDT: a replicated map ==")

    for n <- nodes do
      :ok =
        :erpc.call(n, Demo.Remote, :start, [
          :demo_map,
          for(m <- nodes, m != n, do: {:demo_map, m})
        ])
    end

    say("a Drove.CRDT replica named :demo_map runs on each node, neighbours of each other")

    count = 50_000

    waits =
      for n <- [b, c],
          do:
            Task.async(fn ->
              {n, :erpc.call(n, Demo.Remote, :wait_size, [:demo_map, count], 60_000)}
            end)

    t0 = System.os_time(:microsecond)
    t_last = :erpc.call(a, Demo.Remote, :write, [:demo_map, count], 60_000)
    seen = Enum.map(waits, &Task.await(&1, 60_000))
    say("wrote #{count} keys on #{a} in #{ms(t_last - t0)} ms")

    for {n, t} <- seen do
      say("  #{n} holds all #{count} keys #{ms(t - t_last)} ms after the last write")
    end

    sample = :erpc.call(c, Drove.CRDT, :get, [:demo_map, {:agent, 42}])
    say("read on #{c}: {:agent, 42} => #{inspect(sample)}")

    :erpc.call(b, Drove.CRDT, :delete, [:demo_map, {:agent, 42}])
    wait(fn -> :erpc.call(a, Drove.CRDT, :get, [:demo_map, {:agent, 42}]) == nil end)
    say("deleted {:agent, 42} on #{b}: gone on #{a} too")

    say(
      "killing #{c}, writing 1000 more keys on #{a}, restarting a fresh replica on a new node ..."
    )

    :erpc.cast(c, :erlang, :halt, [])
    wait(fn -> c not in Node.list() end)
    :erpc.call(a, Demo.Remote, :write_tag, [:demo_map, :late, 1000])
    [d] = start_nodes([4])
    t1 = System.os_time(:microsecond)
    :ok = :erpc.call(d, Demo.Remote, :start, [:demo_map, [{:demo_map, a}, {:demo_map, b}]])
    t2 = :erpc.call(d, Demo.Remote, :wait_size, [:demo_map, count - 1 + 1000], 60_000)
    say("#{d} caught up #{count - 1 + 1000} keys in #{ms(t2 - t1)} ms (anti-entropy)")

    sizes = for n <- [a, b, d], do: {n, :erpc.call(n, Drove.CRDT, :info, [:demo_map]).size}
    say("sizes: #{inspect(sizes)}")

    registry([a, b, d])
    say("done.")
  end

  # Part 2: Drove.Registry on the 3 live nodes; 30 agents by name; one node leaves.
  defp registry(nodes) do
    [x, y, z] = nodes
    IO.puts("")
    say("== 2. Drove.Registry: 30 agents by name on #{Enum.map_join(nodes, ", ", &short/1)} ==")
    Enum.each(nodes, &(:ok = :erpc.call(&1, Demo.Remote, :start_registry, [nodes])))
    say("a Drove.Registry named Demo.Registry runs on each node (members: all three)")

    names = for i <- 1..30, do: "agent-" <> String.pad_leading("#{i}", 2, "0")
    # agent-01 on the first node, agent-02 on the second, ...
    placed = Enum.group_by(Enum.with_index(names), fn {_, i} -> Enum.at(nodes, rem(i, 3)) end)

    waits = for n <- nodes, do: Task.async(fn -> {n, wait_count(n, 30)} end)
    t0 = System.os_time(:microsecond)

    for {n, named} <- placed do
      started = :erpc.call(n, Demo.Remote, :start_agents, [Enum.map(named, &elem(&1, 0))])
      true = Enum.all?(started, &match?({:ok, _}, &1))
    end

    t1 = System.os_time(:microsecond)
    say("started 30 agents (10 per node) with {:via, Drove.Registry, ...} in #{ms(t1 - t0)} ms")

    for {n, t} <- Enum.map(waits, &Task.await(&1, 30_000)) do
      say("  #{short(n)} resolves all 30 names #{ms(t - t0)} ms after the first start")
    end

    sample = ["agent-01", "agent-02", "agent-03", "agent-17", "agent-30"]
    seen = Map.new(nodes, &{&1, :erpc.call(&1, Demo.Remote, :owners, [sample])})
    say("where each agent runs, as seen from each node:")
    table(["agent" | Enum.map(nodes, &"seen from #{short(&1)}")], sample, nodes, seen)

    agree = seen |> Map.values() |> Enum.uniq() |> length() == 1
    say("  all three nodes agree: #{agree}")

    via = {:via, Drove.Registry, {Demo.Registry, "agent-03"}}
    reply = :erpc.call(x, GenServer, :call, [via, :hello])
    say("GenServer.call(via \"agent-03\", :hello) from #{short(x)}: #{inspect(reply)}")
    {:error, {:already_started, pid}} = :erpc.call(x, Demo.Agent, :start, ["agent-02"])

    say(
      "starting \"agent-02\" again on #{short(x)}: {:error, {:already_started, pid on #{short(node(pid))}}}"
    )

    # z leaves gracefully: its registry removes its own names on the way out
    mine = for {name, _} <- placed[z], do: name
    others = names -- mine
    IO.puts("")

    say(
      "stopping #{short(z)} gracefully (:init.stop) - it runs #{length(mine)} of the agents ..."
    )

    waits = for n <- [x, y], do: Task.async(fn -> {n, wait_count(n, 20)} end)
    t2 = System.os_time(:microsecond)
    :erpc.cast(z, :init, :stop, [])
    wait(fn -> z not in Node.list() end)
    t3 = System.os_time(:microsecond)

    gone_at = Enum.map(waits, &Task.await(&1, 30_000))

    for {n, t} <- gone_at do
      say(
        "  #{short(n)}: the #{length(mine)} names of #{short(z)} gone #{ms(t - t2)} ms after :init.stop"
      )
    end

    say("  #{short(z)} left Node.list #{ms(t3 - t2)} ms after :init.stop")

    if Enum.all?(gone_at, fn {_, t} -> t < t3 end) do
      say("  (its registry removed its own names on the way out, before the node disconnected)")
    end

    for n <- [x, y] do
      count = :erpc.call(n, Drove.Registry, :count, [Demo.Registry])
      found = :erpc.call(n, Demo.Remote, :owners, [mine]) |> Enum.count(&(&1 != nil))
      kept = :erpc.call(n, Demo.Remote, :owners, [others]) |> Enum.count(&(&1 in [x, y]))

      say(
        "  #{short(n)} now has #{count} agents: #{found}/#{length(mine)} of #{short(z)}'s " <>
          "names resolve, #{kept}/#{length(others)} of the others do"
      )
    end

    say("after #{short(z)} left:")
    seen = Map.new([x, y], &{&1, :erpc.call(&1, Demo.Remote, :owners, [sample])})
    table(["agent" | Enum.map([x, y], &"seen from #{short(&1)}")], sample, [x, y], seen)
  end

  defp wait_count(node, n), do: :erpc.call(node, Demo.Remote, :wait_count, [n], 30_000)

  defp table(header, rows, nodes, seen) do
    line = fn cells ->
      String.trim_trailing("    " <> Enum.map_join(cells, "", &String.pad_trailing(&1, 18)))
    end

    IO.puts(line.(header))

    rows
    |> Enum.with_index()
    |> Enum.each(fn {name, i} ->
      IO.puts(line.([name | Enum.map(nodes, &owner_label(Enum.at(seen[&1], i)))]))
    end)
  end

  defp owner_label(nil), do: "-"
  defp owner_label(node), do: short(node)

  defp wait(fun) do
    if fun.(),
      do: :ok,
      else:
        (
          Process.sleep(5)
          wait(fun)
        )
  end

  defp ms(us), do: Float.round(us / 1000, 1)
end

Demo.run()
